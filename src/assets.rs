//! `snapnet generate-assets DIR`: the man pages and shell completions a
//! package installs, generated from the same clap definitions the binary
//! parses with, so they cannot drift from it.

use std::fs::File;
use std::io;
use std::path::Path;

use clap_complete::Shell;

/// Section 8: system administration commands (a daemon run as root).
const MAN_SECTION: &str = "8";

/// Writes `DIR/man/snapnet.8`, `snapnet-serve.8`, `snapnet-ctl.8` and
/// `DIR/completions/{snapnet.bash,_snapnet,snapnet.fish}`.
pub fn generate(mut cmd: clap::Command, dir: &Path) -> io::Result<()> {
    cmd.build();
    let man = dir.join("man");
    std::fs::create_dir_all(&man)?;
    write_page(&cmd, &man)?;
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        write_page(sub, &man)?;
    }
    let completions = dir.join("completions");
    std::fs::create_dir_all(&completions)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, "snapnet", &completions)?;
    }
    Ok(())
}

fn write_page(cmd: &clap::Command, dir: &Path) -> io::Result<()> {
    let name = cmd
        .get_display_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_string();
    let page = clap_mangen::Man::new(cmd.clone())
        .title(name.to_uppercase())
        .section(MAN_SECTION)
        .source(format!("snapnet {}", snapnet::VERSION))
        .manual("snapnet");
    let mut file = File::create(dir.join(format!("{name}.{MAN_SECTION}")))?;
    page.render(&mut file)
}
