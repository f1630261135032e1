//! Whether a root daemon may trust a file it executes (the incident hook) or reads budgets
//! from (the config, profile files): the rule sshd's StrictModes and sudo apply. Anyone who can
//! write such a file, or replace it through a writable directory above it, could make the root
//! daemon run their commands or squeeze other people's containers. Pure: facts in, verdict out.

use std::path::PathBuf;

/// The ownership and mode of one path (from `stat`), the file first, then each directory up
/// to `/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathFacts {
    pub path: PathBuf,
    pub uid: u32,
    /// `st_mode` permission bits (`0o7777`).
    pub mode: u32,
    pub is_dir: bool,
    /// A symbolic link on the way (its own mode means nothing; its owner and the directory it
    /// sits in decide who can re-point it).
    pub is_symlink: bool,
}

/// `Ok` when only root (or `euid`, the daemon's own user) can change the file or what its
/// path points to; else why not, with the fix, in one line. A directory writable by others is
/// allowed when it has the sticky bit (`/tmp`): there only a file's owner can replace it.
pub fn judge(chain: &[PathFacts], euid: u32) -> Result<(), String> {
    for (i, f) in chain.iter().enumerate() {
        let what = if i == 0 { "is" } else { "is in a directory" };
        if f.uid != 0 && f.uid != euid {
            return Err(format!(
                "{} is owned by uid {}, not root: `chown root {}` (guardian runs as root and must not trust files others control)",
                f.path.display(),
                f.uid,
                f.path.display()
            ));
        }
        let sticky = f.is_dir && f.mode & 0o1000 != 0;
        if f.mode & 0o022 != 0 && !sticky && !f.is_symlink {
            let file = &chain[0].path;
            return Err(format!(
                "{} {what} writable by non-root users ({} is mode {:04o}): `chmod go-w {}` (guardian runs as root and must not trust files others can change)",
                file.display(),
                f.path.display(),
                f.mode & 0o7777,
                f.path.display()
            ));
        }
    }
    Ok(())
}

/// The program a hook command line starts, when it names one by absolute path: the first word
/// of `sh -c <hook>` (`/usr/local/bin/notify "$1"` → `/usr/local/bin/notify`).
pub fn hook_program(hook: &str) -> Option<PathBuf> {
    let first = hook.split_whitespace().next()?;
    first.starts_with('/').then(|| PathBuf::from(first))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(path: &str, uid: u32, mode: u32, is_dir: bool) -> PathFacts {
        PathFacts {
            path: path.into(),
            uid,
            mode,
            is_dir,
            is_symlink: false,
        }
    }

    fn chain(file_mode: u32, dir_mode: u32, dir_uid: u32) -> Vec<PathFacts> {
        vec![
            facts("/etc/guardian/guardian.toml", 0, file_mode, false),
            facts("/etc/guardian", dir_uid, dir_mode, true),
            facts("/etc", 0, 0o755, true),
            facts("/", 0, 0o755, true),
        ]
    }

    #[test]
    fn root_owned_and_not_writable_by_others_is_trusted() {
        assert_eq!(judge(&chain(0o644, 0o755, 0), 0), Ok(()));
        assert_eq!(judge(&chain(0o600, 0o700, 0), 0), Ok(()));
    }

    #[test]
    fn a_group_or_world_writable_file_is_refused_with_the_fix() {
        for mode in [0o664, 0o666, 0o646] {
            let e = judge(&chain(mode, 0o755, 0), 0).unwrap_err();
            assert!(e.contains("writable by non-root users"), "{e}");
            assert!(e.contains("chmod go-w /etc/guardian/guardian.toml"), "{e}");
        }
    }

    #[test]
    fn a_writable_or_foreign_directory_above_it_is_refused() {
        let e = judge(&chain(0o644, 0o777, 0), 0).unwrap_err();
        assert!(e.contains("is in a directory writable"), "{e}");
        assert!(e.contains("chmod go-w /etc/guardian`"), "{e}");
        let e = judge(&chain(0o644, 0o755, 1000), 0).unwrap_err();
        assert!(e.contains("/etc/guardian is owned by uid 1000"), "{e}");
    }

    #[test]
    fn a_file_owned_by_another_user_is_refused_but_the_daemons_own_user_is_fine() {
        let mut c = chain(0o644, 0o755, 0);
        c[0].uid = 1000;
        assert!(judge(&c, 0).unwrap_err().contains("owned by uid 1000"));
        assert_eq!(judge(&c, 1000), Ok(()));
    }

    #[test]
    fn a_sticky_world_writable_directory_like_tmp_is_allowed() {
        let c = vec![
            facts("/tmp/hook.sh", 0, 0o755, false),
            facts("/tmp", 0, 0o1777, true),
            facts("/", 0, 0o755, true),
        ];
        assert_eq!(judge(&c, 0), Ok(()));
    }

    #[test]
    fn a_symlink_counts_by_its_owner_and_its_directory_not_its_mode() {
        let link = PathFacts {
            is_symlink: true,
            ..facts("/opt/hooks/notify", 0, 0o777, false)
        };
        let target = facts("/usr/local/bin/notify", 0, 0o755, false);
        let root_dir = facts("/opt/hooks", 0, 0o755, true);
        assert_eq!(judge(&[link.clone(), root_dir, target.clone()], 0), Ok(()));
        // In a directory another user owns, the link can be re-pointed: refused.
        let user_dir = facts("/opt/hooks", 1000, 0o755, true);
        let e = judge(&[link.clone(), user_dir, target.clone()], 0).unwrap_err();
        assert!(e.contains("/opt/hooks is owned by uid 1000"), "{e}");
        let user_link = PathFacts { uid: 1000, ..link };
        assert!(judge(&[user_link, target], 0).is_err());
    }

    #[test]
    fn the_hook_program_is_its_first_word_when_absolute() {
        assert_eq!(
            hook_program("/usr/local/bin/notify \"$1\""),
            Some(PathBuf::from("/usr/local/bin/notify"))
        );
        assert_eq!(hook_program("notify-send OOM \"$1\""), None);
        assert_eq!(hook_program("  "), None);
    }
}
