//! tracefs: find it (mount it if it is missing) and read tracepoint formats, so the eBPF programs
//! read fields at this kernel's offsets rather than hard-coded ones.

use std::path::{Path, PathBuf};

use guardian_common::{OomLayout, FIELD_ABSENT};

/// Where tracefs is usually mounted, newest convention first.
const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Errors finding tracefs or reading a format.
#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error("tracefs is not mounted and mounting it at {path} failed ({source}): run `mount -t tracefs nodev /sys/kernel/tracing` as root")]
    NotMounted { path: PathBuf, source: nix::Error },
    #[error("this kernel has no tracepoint {category}:{name} ({path} is missing)")]
    MissingTracepoint {
        category: String,
        name: String,
        path: PathBuf,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no `{field}` field in the tracepoint format")]
    MissingField { path: PathBuf, field: &'static str },
}

/// A mounted tracefs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracefs {
    pub root: PathBuf,
    /// True when guardian mounted it just now.
    pub mounted_now: bool,
}

impl Tracefs {
    /// Finds tracefs, mounting it at /sys/kernel/tracing when it is not mounted anywhere.
    pub fn ensure() -> Result<Self, TracefsError> {
        for candidate in CANDIDATES {
            if Path::new(candidate).join("events").is_dir() {
                return Ok(Self {
                    root: PathBuf::from(candidate),
                    mounted_now: false,
                });
            }
        }
        let target = PathBuf::from(CANDIDATES[0]);
        nix::mount::mount(
            Some("nodev"),
            &target,
            Some("tracefs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|source| TracefsError::NotMounted {
            path: target.clone(),
            source,
        })?;
        Ok(Self {
            root: target,
            mounted_now: true,
        })
    }

    /// Reads `events/<category>/<name>/format`.
    pub fn format(&self, category: &str, name: &str) -> Result<TraceFormat, TracefsError> {
        let path = self
            .root
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        let text = std::fs::read_to_string(&path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                TracefsError::MissingTracepoint {
                    category: category.to_string(),
                    name: name.to_string(),
                    path: path.clone(),
                }
            } else {
                TracefsError::Read {
                    path: path.clone(),
                    source,
                }
            }
        })?;
        Ok(TraceFormat::parse(&path, &text))
    }
}

/// One field of a trace record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    /// The C declaration before the name, e.g. `unsigned long` or `__data_loc char[]`.
    pub ctype: String,
    pub offset: u16,
    pub size: u16,
}

/// The parsed `format` file of one tracepoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceFormat {
    pub path: PathBuf,
    pub fields: Vec<Field>,
}

impl TraceFormat {
    /// Parses lines like `field:unsigned long total_vm;\toffset:16;\tsize:8;\tsigned:0;`.
    pub fn parse(path: &Path, text: &str) -> Self {
        let fields = text
            .lines()
            .filter_map(|line| {
                let mut decl = None;
                let mut offset = None;
                let mut size = None;
                for part in line.trim().split(';') {
                    let part = part.trim();
                    if let Some(d) = part.strip_prefix("field:") {
                        decl = Some(d.trim());
                    } else if let Some(o) = part.strip_prefix("offset:") {
                        offset = o.parse().ok();
                    } else if let Some(s) = part.strip_prefix("size:") {
                        size = s.parse().ok();
                    }
                }
                let decl = decl?;
                let (ctype, name) = decl.rsplit_once(' ')?;
                // `char comm[16]` names the field `comm`.
                let name = name.split('[').next()?.to_string();
                Some(Field {
                    name,
                    ctype: ctype.to_string(),
                    offset: offset?,
                    size: size?,
                })
            })
            .collect();
        Self {
            path: path.to_path_buf(),
            fields,
        }
    }

    /// The field called `name`, if the record has it.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Offset of `name` if it exists with the expected size, else [`FIELD_ABSENT`].
    fn offset_sized(&self, name: &str, size: u16) -> u16 {
        self.field(name)
            .filter(|f| f.size == size)
            .map_or(FIELD_ABSENT, |f| f.offset)
    }

    /// The layout of `oom:mark_victim` for the eBPF program. Only `pid` is required.
    pub fn oom_layout(&self) -> Result<OomLayout, TracefsError> {
        let pid = self.offset_sized("pid", 4);
        if pid == FIELD_ABSENT {
            return Err(TracefsError::MissingField {
                path: self.path.clone(),
                field: "pid",
            });
        }
        let mut layout = OomLayout::pid_only(pid);
        if let Some(comm) = self.field("comm") {
            if comm.ctype.starts_with("__data_loc") && comm.size == 4 {
                layout.comm = comm.offset;
                layout.comm_is_data_loc = 1;
            } else if comm.size as usize == guardian_common::COMM_LEN {
                layout.comm = comm.offset;
            }
        }
        // The RSS counters are `unsigned long`: 8 bytes on the 64-bit hosts guardian runs on.
        layout.total_vm = self.offset_sized("total_vm", 8);
        layout.anon_rss = self.offset_sized("anon_rss", 8);
        layout.file_rss = self.offset_sized("file_rss", 8);
        layout.shmem_rss = self.offset_sized("shmem_rss", 8);
        layout.uid = self.offset_sized("uid", 4);
        layout.pgtables = self.offset_sized("pgtables", 8);
        layout.oom_score_adj = self.offset_sized("oom_score_adj", 2);
        Ok(layout)
    }

    /// Offset of `nr_reclaimed` in `vmscan:mm_vmscan_memcg_reclaim_end`, or [`FIELD_ABSENT`].
    pub fn nr_reclaimed_offset(&self) -> u16 {
        self.offset_sized("nr_reclaimed", 8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARK_VICTIM_6_18: &str = include_str!("fixtures/mark_victim-6.18.format");
    /// Debian's 6.1.176 (bookworm) carries the 6.9 extension as a backport.
    const MARK_VICTIM_6_1_176: &str = include_str!("fixtures/mark_victim-6.1.176.format");
    const RECLAIM_END_6_18: &str = include_str!("fixtures/memcg_reclaim_end-6.18.format");

    #[test]
    fn mark_victim_on_6_18_has_comm_and_rss() {
        let f = TraceFormat::parse(Path::new("format"), MARK_VICTIM_6_18);
        let l = f.oom_layout().unwrap();
        assert_eq!(l.pid, 8);
        assert_eq!((l.comm, l.comm_is_data_loc), (12, 1));
        assert_eq!(
            (l.total_vm, l.anon_rss, l.file_rss, l.shmem_rss),
            (16, 24, 32, 40)
        );
        assert_eq!((l.uid, l.pgtables, l.oom_score_adj), (48, 56, 64));
    }

    #[test]
    fn mark_victim_on_debian_6_1_176_has_the_backported_fields() {
        let f = TraceFormat::parse(Path::new("format"), MARK_VICTIM_6_1_176);
        let l = f.oom_layout().unwrap();
        assert_eq!((l.pid, l.comm, l.comm_is_data_loc), (8, 12, 1));
        assert_eq!((l.anon_rss, l.oom_score_adj), (24, 64));
    }

    #[test]
    fn mark_victim_before_6_9_has_pid_only() {
        // Kernels before the 6.9 extension (and 6.1 before Debian's backport) print the common
        // fields and `pid` only: the 6.18 capture without the fields 6.9 added.
        let added = [
            "comm",
            "total_vm",
            "anon_rss",
            "file_rss",
            "shmem_rss",
            "uid",
            "pgtables",
            "oom_score_adj",
        ];
        let old: String = MARK_VICTIM_6_18
            .lines()
            .filter(|l| !added.iter().any(|f| l.contains(&format!(" {f};"))))
            .map(|l| format!("{l}\n"))
            .collect();
        let f = TraceFormat::parse(Path::new("format"), &old);
        assert_eq!(f.fields.len(), 5, "{old}");
        assert_eq!(f.oom_layout().unwrap(), OomLayout::pid_only(8));
    }

    #[test]
    fn a_format_without_pid_is_refused() {
        let f = TraceFormat::parse(Path::new("format"), RECLAIM_END_6_18);
        assert!(matches!(
            f.oom_layout(),
            Err(TracefsError::MissingField { field: "pid", .. })
        ));
    }

    #[test]
    fn reclaim_end_has_nr_reclaimed() {
        let f = TraceFormat::parse(Path::new("format"), RECLAIM_END_6_18);
        assert_eq!(f.nr_reclaimed_offset(), 8);
    }

    #[test]
    fn fixed_size_comm_arrays_are_read_in_place() {
        let text = "\tfield:int pid;\toffset:8;\tsize:4;\tsigned:1;\n\tfield:char comm[16];\toffset:12;\tsize:16;\tsigned:0;\n";
        let l = TraceFormat::parse(Path::new("format"), text)
            .oom_layout()
            .unwrap();
        assert_eq!((l.comm, l.comm_is_data_loc), (12, 0));
    }
}
