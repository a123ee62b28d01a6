#!/usr/bin/env bash
# libvirt, as most clouds drive QEMU: Debian's libvirtd and virtlogd run
# directly (no systemd), two TCG domains get `<interface type='vhostuser'>`
# on snapnet's sockets, one per socket role (domain a: QEMU connects to
# snapnet's socket, mode='client'; domain b: QEMU listens, mode='server',
# snapnet's vNIC has role client), and they must ping each other and carry
# an iperf3 stream through snapnet. The domain XML is the README's
# ("Attaching a guest: libvirt"). libvirtd, virtlogd and the domains go at
# cleanup; it refuses to run beside a libvirtd it did not start.
source "$(dirname "$0")/lib.sh"
vm_setup
for tool in libvirtd virtlogd virsh; do
    command -v "$tool" >/dev/null || vm_fail "$tool is missing (vm-tests/run-all.sh installs libvirt-daemon-system and libvirt-clients)"
done
VIRSH=(virsh -q -c qemu:///system)
if "${VIRSH[@]}" version >/dev/null 2>&1; then
    vm_fail "a libvirtd already runs here; this test starts its own (stop it first)"
fi
LV_PREFIX="snapnet-$$"
vm_cleanup_hook() {
    local d
    for d in a b; do
        "${VIRSH[@]}" destroy "$LV_PREFIX-$d" >/dev/null 2>&1
        "${VIRSH[@]}" undefine "$LV_PREFIX-$d" >/dev/null 2>&1
    done
    [ -n "${LV_LIBVIRTD:-}" ] && kill "$LV_LIBVIRTD" 2>/dev/null
    [ -n "${LV_VIRTLOGD:-}" ] && kill "$LV_VIRTLOGD" 2>/dev/null
}
virtlogd >"$VM_DIR/virtlogd.log" 2>&1 &
LV_VIRTLOGD=$!
libvirtd >"$VM_DIR/libvirtd.log" 2>&1 &
LV_LIBVIRTD=$!
for i in $(seq 100); do
    "${VIRSH[@]}" version >/dev/null 2>&1 && break
    kill -0 "$LV_LIBVIRTD" 2>/dev/null || vm_fail "libvirtd exited at start"
    sleep 0.2
done
"${VIRSH[@]}" version >/dev/null 2>&1 || vm_fail "libvirtd does not answer"

# QEMU runs as Debian's libvirt-qemu (group kvm), as libvirt's qemu.conf
# says: snapnet's own socket is kvm's to connect to (vnic_socket_group), and
# QEMU's listening socket, its console log and its kernel are in a directory
# of its own, which snapnet (root) reaches.
id libvirt-qemu >/dev/null 2>&1 || vm_fail "no libvirt-qemu user (libvirt-daemon-system creates it)"
chmod 0711 "$VM_DIR"
QDIR=$VM_DIR/qemu
install -d -o libvirt-qemu -g kvm -m 0750 "$QDIR"
install -o libvirt-qemu -g kvm -m 0640 "$GUEST_KERNEL" "$QDIR/vmlinux"
install -o libvirt-qemu -g kvm -m 0640 "$GUEST_INITRD" "$QDIR/initrd.img"
GUEST_KERNEL=$QDIR/vmlinux GUEST_INITRD=$QDIR/initrd.img
cfg=$VM_DIR/libvirt.json
cat >"$cfg" <<JSON
{ "runtime_dir": "$VM_DIR", "socket_dirs": [ "$QDIR" ], "vnic_socket_group": "kvm",
  "vnics": [
    { "name": "vnic0", "mac": "52:54:00:5a:00:01" },
    { "name": "vnic1", "mac": "52:54:00:5a:00:02", "role": "client", "socket": "$QDIR/vm1.sock" } ],
  "groups": [ { "name": "default", "policy": "dedicated", "threads": 1 } ] }
JSON
vm_snapnet "$cfg"
[ "$(stat -c %G:%a "$VM_DIR/vnic0.sock")" = kvm:660 ] ||
    vm_fail "vnic0.sock is $(stat -c %G:%a "$VM_DIR/vnic0.sock"), not kvm:660"

# domain_xml NAME MAC SOCKET MODE CMDLINE SERIAL-LOG
domain_xml() {
    local vectors=""
    # QEMU < 8 under TCG crashes when a vhost-user virtio-net device enables
    # MSI-X (launch-guest.sh): INTx through libvirt's QEMU property override.
    if "$VM_QEMU" --version | grep -q "version [1-7]\."; then
        vectors="<qemu:override><qemu:device alias='net0'><qemu:frontend><qemu:property name='vectors' type='unsigned' value='0'/></qemu:frontend></qemu:device></qemu:override>"
    fi
    cat <<XML
<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>$1</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <memoryBacking>
    <source type='memfd'/>
    <access mode='shared'/>
  </memoryBacking>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$GUEST_KERNEL</kernel>
    <initrd>$GUEST_INITRD</initrd>
    <cmdline>console=ttyS0 quiet panic=-1 $5</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>$(command -v "$VM_QEMU")</emulator>
    <interface type='vhostuser'>
      <mac address='$2'/>
      <source type='unix' path='$3' mode='$4'>$([ "$4" = client ] && echo "<reconnect enabled='yes' timeout='1'/>")</source>
      <model type='virtio'/>
    </interface>
    <serial type='file'>
      <source path='$6'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
  $vectors
</domain>
XML
}

start_domain() { # d mac socket mode cmdline
    local name=$LV_PREFIX-$1
    # vm_result/vm_wait read $VM_DIR/lv<d>.log: the serial console, which
    # QEMU (libvirt-qemu) writes in its directory.
    domain_xml "$name" "$2" "$3" "$4" "$5" "$QDIR/lv$1.log" >"$VM_DIR/$1.xml"
    ln -sf "$QDIR/lv$1.log" "$VM_DIR/lv$1.log"
    "${VIRSH[@]}" define "$VM_DIR/$1.xml" >/dev/null 2>"$VM_DIR/define-$1.err" ||
        vm_fail "virsh define $1: $(cat "$VM_DIR/define-$1.err")"
    "${VIRSH[@]}" start "$name" >/dev/null 2>"$VM_DIR/start-$1.err" ||
        vm_fail "virsh start $1: $(cat "$VM_DIR/start-$1.err")"
}
start_domain a 52:54:00:5a:00:01 "$VM_DIR/vnic0.sock" client \
    "snapnet.ip=10.0.0.1/24 snapnet.peer=10.0.0.2 snapnet.tests=ping,iperf-server,hold snapnet.hold=90 snapnet.hold_until=iperf snapnet.wait_peer=60"
who=$(ps -o user= -p "$(pgrep -f "guest=$LV_PREFIX-a" | head -1)" 2>/dev/null) || who="?"
start_domain b 52:54:00:5a:00:02 "$QDIR/vm1.sock" server \
    "snapnet.ip=10.0.0.2/24 snapnet.peer=10.0.0.1 snapnet.tests=ping,iperf-client snapnet.iperf_time=5 snapnet.wait_peer=60"
vm_wait lvb 180
vm_wait lva 60
vm_expect lva ping
vm_expect lvb ping
vm_expect lvb iperf-client
r=$(vm_result lvb iperf-client)
vm_pass "libvirt $("${VIRSH[@]}" version | sed -n 's/.*libvirt \([0-9.]*\).*/\1/p' | head -1): ping both ways; iperf3=$(vm_field "$r" gbps)Gbit/s (domain a mode=client, b mode=server; QEMU ran as $who)"
