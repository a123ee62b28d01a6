//! Unix groups named in the config (`control_group`, `vnic_socket_group`),
//! resolved to ids.

/// The id of the unix group `name`, or a message naming the config key.
pub fn group_id(key: &str, name: &str) -> Result<u32, String> {
    let c = std::ffi::CString::new(name).map_err(|_| format!("{key}: bad group name '{name}'"))?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: plain data, filled by getgrnam_r.
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: `c` is a valid C string, `group`, `buf` (with its true length)
    // and `found` are valid out pointers that outlive the call; the
    // reentrant form, because the daemon resolves groups from its control
    // threads too.
    let rc = unsafe {
        libc::getgrnam_r(
            c.as_ptr(),
            &mut group,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 {
        return Err(format!(
            "{key}: cannot look up group '{name}': {}",
            std::io::Error::from_raw_os_error(rc)
        ));
    }
    if found.is_null() {
        return Err(format!("{key}: no unix group named '{name}'"));
    }
    Ok(group.gr_gid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_resolves_and_unknown_groups_are_named() {
        assert_eq!(group_id("control_group", "root"), Ok(0));
        let e = group_id("vnic_socket_group", "no-such-group-snapnet").unwrap_err();
        assert!(
            e.contains("vnic_socket_group") && e.contains("no-such-group-snapnet"),
            "{e}"
        );
    }
}
