// SPDX-License-Identifier: MIT OR GPL-2.0-only
//
// snapnet's XDP program for an uplink interface.
//
// Only frames addressed to one of snapnet's guests are redirected to the
// AF_XDP socket of the queue they arrived on; everything else, including the
// host's own traffic, goes on to the kernel (XDP_PASS).
//
// Broadcast and multicast are passed to the kernel as well. XDP cannot clone
// a frame, so a frame can either go to the socket or to the kernel, never to
// both; the kernel needs ARP broadcasts and IPv6 neighbour multicast for its
// own address, and so do the guests. snapnet therefore reads its copy of
// group-addressed frames from a packet socket on the interface (the kernel
// delivers every frame it receives to packet sockets before its own stack),
// filtered in the kernel to group-addressed destinations. Group-addressed
// traffic is a small share of the total, so that copy is cheap.
//
// Rebuild with xdp/build.sh; the object is committed next to this file and a
// test checks that it matches this source.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

// AF_XDP sockets by receive queue index.
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u32);
} snapnet_xsks SEC(".maps");

// Guest MAC addresses (6 bytes, zero-padded to 8), kept current by snapnet
// as vNICs come and go.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u8);
} snapnet_guest_macs SEC(".maps");

// This host's underlay IPv4 addresses (network byte order) that snapnet
// serves, each with what it serves there: VTEP_VXLAN, VXLAN (UDP 4789) on an
// overlay uplink, which snapnet checks and decapsulates; VTEP_PONY, Pony
// Express (UDP 7471, docs/pony.md). A value of 1 (VXLAN) is what programs
// before Pony wrote, so a program handed over in an upgrade reads the same.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u8);
} snapnet_vteps SEC(".maps");

#define ETH_HLEN 14
#define ETH_P_IPV4_BE 0x0008 /* 0x0800 as it lies in memory */
#define VXLAN_PORT_BE 0xb512 /* 4789 as it lies in memory */
#define PONY_PORT_BE 0x2f1d /* 7471 as it lies in memory */
#define VTEP_VXLAN 1
#define VTEP_PONY 2

static __always_inline int is_udp_to_us(const unsigned char *data,
					  const unsigned char *data_end)
{
	const unsigned char *ip = data + ETH_HLEN;
	__u32 dst;
	__u16 dport;
	__u8 *served;
	int ihl;

	if (*(const __u16 *)(data + 12) != ETH_P_IPV4_BE)
		return 0;
	if (ip + 20 > data_end || ip[9] != 17 /* UDP */)
		return 0;
	ihl = (ip[0] & 0x0f) * 4;
	if (ihl < 20 || ip + ihl + 8 > data_end)
		return 0;
	__builtin_memcpy(&dport, ip + ihl + 2, 2);
	if (dport != VXLAN_PORT_BE && dport != PONY_PORT_BE)
		return 0;
	__builtin_memcpy(&dst, ip + 16, 4);
	served = bpf_map_lookup_elem(&snapnet_vteps, &dst);
	if (!served)
		return 0;
	if (dport == VXLAN_PORT_BE)
		return (*served & VTEP_VXLAN) != 0;
	return (*served & VTEP_PONY) != 0;
}

SEC("xdp")
int snapnet_uplink(struct xdp_md *ctx)
{
	const unsigned char *data = (const void *)(long)ctx->data;
	const unsigned char *data_end = (const void *)(long)ctx->data_end;
	__u64 key = 0;

	if (data + ETH_HLEN > data_end)
		return XDP_PASS;
	if (is_udp_to_us(data, data_end))
		return bpf_redirect_map(&snapnet_xsks, ctx->rx_queue_index, XDP_PASS);
	// Group bit of the destination: broadcast or multicast.
	if (data[0] & 1)
		return XDP_PASS;
	__builtin_memcpy(&key, data, 6);
	if (!bpf_map_lookup_elem(&snapnet_guest_macs, &key))
		return XDP_PASS;
	return bpf_redirect_map(&snapnet_xsks, ctx->rx_queue_index, XDP_PASS);
}

char _license[] SEC("license") = "Dual MIT/GPL";
