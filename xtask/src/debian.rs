//! Packages from other Debian releases (trixie's Compose v2, bullseye's kernel) fetched with
//! the host's own mirror, without touching the host's apt configuration: a sources list and a
//! lists directory of their own, `apt-get update/download` pointed at them.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::Context as _;

use crate::run_status;

/// One other release's package lists, kept in `dir`.
pub struct Release {
    suite: String,
    dir: PathBuf,
    list: PathBuf,
}

impl Release {
    /// Writes the sources list for `suite` on the host's mirror into `dir`.
    pub fn new(dir: &Path, suite: &str) -> anyhow::Result<Self> {
        let mirror = mirror()?;
        std::fs::create_dir_all(dir.join("lists/partial"))?;
        let list = dir.join("sources.list");
        std::fs::write(
            &list,
            format!(
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {mirror} {suite} main\n"
            ),
        )?;
        Ok(Self {
            suite: suite.to_string(),
            dir: dir.to_path_buf(),
            list,
        })
    }

    /// `tool` (apt-get, apt-cache) reading this release's lists only.
    fn apt(&self, tool: &str) -> Command {
        let mut cmd = Command::new(tool);
        cmd.arg("-q")
            .arg(format!("-o=Dir::Etc::sourcelist={}", self.list.display()))
            .arg("-o=Dir::Etc::sourceparts=/nonexistent")
            .arg(format!(
                "-o=Dir::State::Lists={}",
                self.dir.join("lists").display()
            ));
        cmd
    }

    /// Fetches the package lists.
    pub fn update(&self) -> anyhow::Result<()> {
        println!("setup: fetching Debian {}'s package lists", self.suite);
        run_status(self.apt("apt-get").arg("update").stdout(Stdio::null()))
            .with_context(|| format!("apt-get update for Debian {}", self.suite))
    }

    /// The package a metapackage depends on whose name starts with `prefix` (e.g. the kernel
    /// that `linux-image-amd64` stands for).
    pub fn dependency(&self, package: &str, prefix: &str) -> anyhow::Result<String> {
        let out = self.apt("apt-cache").args(["depends", package]).output()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.trim().strip_prefix("Depends: "))
            .filter(|p| p.starts_with(prefix))
            .map(str::to_string)
            .with_context(|| format!("Debian {}'s {package} names no {prefix}*", self.suite))
    }

    /// Downloads `package` into `into` (emptied of other .deb files first); returns its path.
    pub fn download(&self, package: &str, into: &Path) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(into)?;
        for old in debs(into) {
            std::fs::remove_file(old)?;
        }
        // apt-get download as root warns that _apt cannot write here: harmless.
        run_status(
            self.apt("apt-get")
                .args(["download", package])
                .current_dir(into)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .with_context(|| format!("apt-get download {package} from Debian {}", self.suite))?;
        let deb = debs(into)
            .into_iter()
            .next()
            .with_context(|| format!("apt-get download {package} left no .deb"))?;
        Ok(std::fs::canonicalize(deb)?)
    }
}

/// The .deb files in `dir`.
pub fn debs(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "deb"))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// The Debian archive this host's apt uses (so nothing names a mirror): the source of the
/// host's own release (`VERSION_CODENAME` of /etc/os-release) in sources.list(.d), one-line or
/// deb822, else the first main-archive (`…/debian`) source.
pub fn mirror() -> anyhow::Result<String> {
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let codename = os_release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|c| c.trim_matches('"').to_string())
        .unwrap_or_default();
    let mut texts = Vec::new();
    if let Ok(t) = std::fs::read_to_string("/etc/apt/sources.list") {
        texts.push(t);
    }
    if let Ok(entries) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            if p.extension().is_some_and(|e| e == "sources" || e == "list") {
                texts.push(std::fs::read_to_string(&p).unwrap_or_default());
            }
        }
    }
    texts
        .iter()
        .find_map(|t| mirror_in(t, &codename))
        .context("no Debian archive in /etc/apt/sources.list(.d): packages of other Debian releases come from the host's own mirror")
}

/// The archive URI of one sources file (one-line or deb822 format): a `deb` source whose
/// suites include `codename`, or else one whose URI is a main archive (ends in `/debian`).
pub fn mirror_in(text: &str, codename: &str) -> Option<String> {
    let mut sources: Vec<(String, String)> = Vec::new();
    // One-line format: deb [options] URI SUITE COMPONENTS...
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("deb ") else {
            continue;
        };
        let rest = match rest.trim_start().strip_prefix('[') {
            Some(r) => r.split_once(']').map_or("", |(_, r)| r),
            None => rest,
        };
        let mut words = rest.split_whitespace();
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            sources.push((uri.to_string(), suite.to_string()));
        }
    }
    // deb822: stanzas separated by blank lines.
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        if !field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb")) {
            continue;
        }
        let suites = field("Suites").unwrap_or_default();
        for uri in field("URIs").unwrap_or_default().split_whitespace() {
            sources.push((uri.to_string(), suites.clone()));
        }
    }
    let clean = |uri: &str| uri.trim_end_matches('/').to_string();
    let of_release = sources.iter().find(|(_, suites)| {
        !codename.is_empty() && suites.split_whitespace().any(|s| s == codename)
    });
    let main_archive = || {
        sources.iter().find(|(uri, suites)| {
            uri.trim_end_matches('/').ends_with("/debian")
                && suites.split_whitespace().any(|s| !s.contains('-'))
        })
    };
    of_release.or_else(main_archive).map(|(uri, _)| clean(uri))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mirror_is_read_from_deb822_and_one_line_sources() {
        let deb822 = "Types: deb\n# a comment: with a colon\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n";
        assert_eq!(
            mirror_in(deb822, "bookworm").as_deref(),
            Some("http://mirror.example/debian")
        );
        let security_only =
            "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n";
        assert_eq!(mirror_in(security_only, "bookworm"), None);
        let one_line = "deb [signed-by=/k.gpg] http://m.example/debian/ bookworm main\n";
        assert_eq!(
            mirror_in(one_line, "bookworm").as_deref(),
            Some("http://m.example/debian")
        );
        assert_eq!(
            mirror_in("deb https://other.example/apt stable main\n", "bookworm"),
            None
        );
    }

    #[test]
    fn a_proxy_or_local_mirror_is_found_by_the_hosts_release() {
        let proxied = "deb http://apt-cache.local:3142/mirror bookworm main\n";
        assert_eq!(
            mirror_in(proxied, "bookworm").as_deref(),
            Some("http://apt-cache.local:3142/mirror")
        );
        let other_first =
            "deb https://vendor.example/apt stable main\ndeb http://m.example/debian bookworm main\n";
        assert_eq!(
            mirror_in(other_first, "bookworm").as_deref(),
            Some("http://m.example/debian")
        );
    }
}
