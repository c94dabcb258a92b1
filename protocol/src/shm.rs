//! POSIX shared-memory primitives: segment names, creation, mapping and stale-segment detection.
//!
//! Segments are created and unlinked only by the supervisor ([`OwnedSegment`]); workers open them
//! by name and map them ([`open_segment`]). A segment's name carries the owning supervisor's pid
//! and that process's start time (`livecalc.<pid>.<start>.<seq>`), so a later supervisor can tell
//! a live owner from a dead one even after the pid has been reused, and remove what the dead one
//! left behind.
//!
//! This module is the one place in the protocol crate that talks to `mmap`; every unsafe block
//! states why it is sound.

use nix::fcntl::OFlag;
use nix::sys::mman::{self, MapFlags, ProtFlags};
use nix::sys::stat::Mode;
use std::ffi::c_void;
use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::ptr::NonNull;

/// Where Linux exposes POSIX shared memory as files.
pub const SHM_DIR: &str = "/dev/shm";
/// Prefix of every LiveCalc segment name.
pub const PREFIX: &str = "livecalc.";

/// A parsed segment name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentName {
    pub pid: u32,
    pub start_time: u64,
    pub seq: u64,
}

impl SegmentName {
    /// The name as `shm_open` takes it (with the leading slash).
    pub fn shm_path(&self) -> String {
        format!("/{}", self.file_name())
    }

    /// The name as it appears under `/dev/shm`.
    pub fn file_name(&self) -> String {
        format!("{PREFIX}{}.{}.{}", self.pid, self.start_time, self.seq)
    }

    pub fn parse(file_name: &str) -> Option<SegmentName> {
        let rest = file_name.trim_start_matches('/').strip_prefix(PREFIX)?;
        let mut it = rest.split('.');
        let pid = it.next()?.parse().ok()?;
        let start_time = it.next()?.parse().ok()?;
        let seq = it.next()?.parse().ok()?;
        if it.next().is_some() {
            return None;
        }
        Some(SegmentName {
            pid,
            start_time,
            seq,
        })
    }

    /// True when the process that created this segment no longer exists.
    pub fn owner_is_gone(&self) -> bool {
        process_start_time(self.pid) != Some(self.start_time)
    }
}

/// Start time of a process in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses; fields resume after the
    // last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Every LiveCalc segment currently in `/dev/shm`.
pub fn list_segments() -> std::io::Result<Vec<SegmentName>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(SHM_DIR)? {
        let entry = entry?;
        if let Some(name) = entry.file_name().to_str().and_then(SegmentName::parse) {
            out.push(name);
        }
    }
    out.sort_by_key(|n| (n.pid, n.start_time, n.seq));
    Ok(out)
}

/// Remove every segment whose owning supervisor is gone; returns what was removed.
pub fn remove_stale() -> std::io::Result<Vec<SegmentName>> {
    let mut removed = Vec::new();
    for name in list_segments()? {
        if name.owner_is_gone() {
            match mman::shm_unlink(name.shm_path().as_str()) {
                Ok(()) | Err(nix::errno::Errno::ENOENT) => removed.push(name),
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(removed)
}

/// Bytes free in the shared-memory file system.
pub fn free_bytes() -> std::io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(Path::new(SHM_DIR))?;
    Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// A read-only or read-write shared mapping of a whole segment.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<c_void>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory with no thread affinity; synchronisation of its
// contents is the bus protocol's job (state words, sealed segments), not the pointer's.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` only hands out raw pointers.
unsafe impl Sync for Mapping {}

impl Mapping {
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr().cast()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The mapped bytes.
    ///
    /// # Safety
    /// No other process or thread may write the bytes read while the slice lives (true of a
    /// sealed segment).
    pub unsafe fn bytes(&self) -> &[u8] {
        // SAFETY: ptr..ptr+len is a live mapping owned by self; the caller guarantees no
        // concurrent writes.
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len came from a successful mmap and are unmapped exactly once.
        let _ = unsafe { mman::munmap(self.ptr, self.len) };
    }
}

/// A segment created by this process; unlinked when dropped.
#[derive(Debug)]
pub struct OwnedSegment {
    name: SegmentName,
    mapping: Mapping,
    unlinked: bool,
}

impl OwnedSegment {
    /// Create a new segment of `len` bytes, mode 0600, mapped read-write.
    pub fn create(name: SegmentName, len: usize) -> std::io::Result<OwnedSegment> {
        let path = name.shm_path();
        let fd = mman::shm_open(
            path.as_str(),
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR,
            Mode::S_IRUSR | Mode::S_IWUSR,
        )?;
        let result = (|| {
            nix::unistd::ftruncate(&fd, len as i64)?;
            map_fd(&fd, len, true)
        })();
        match result {
            Ok(mapping) => Ok(OwnedSegment {
                name,
                mapping,
                unlinked: false,
            }),
            Err(e) => {
                let _ = mman::shm_unlink(path.as_str());
                Err(e)
            }
        }
    }

    pub fn name(&self) -> SegmentName {
        self.name
    }

    pub fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    pub fn len(&self) -> usize {
        self.mapping.len
    }

    pub fn is_empty(&self) -> bool {
        self.mapping.len == 0
    }

    /// Remove the name now; mappings (here and in workers) stay valid until unmapped.
    pub fn unlink(&mut self) {
        if !self.unlinked {
            let _ = mman::shm_unlink(self.name.shm_path().as_str());
            self.unlinked = true;
        }
    }
}

impl Drop for OwnedSegment {
    fn drop(&mut self) {
        self.unlink();
    }
}

/// Open an existing segment by its `/dev/shm` name; returns the descriptor and its size.
pub fn open_segment(file_name: &str, writable: bool) -> std::io::Result<(OwnedFd, usize)> {
    let flags = if writable {
        OFlag::O_RDWR
    } else {
        OFlag::O_RDONLY
    };
    let fd = mman::shm_open(format!("/{file_name}").as_str(), flags, Mode::empty())?;
    let len = nix::sys::stat::fstat(&fd)?.st_size as usize;
    Ok((fd, len))
}

/// Map a whole descriptor with `MAP_SHARED`.
pub fn map_fd(fd: &OwnedFd, len: usize, writable: bool) -> std::io::Result<Mapping> {
    let size = NonZeroUsize::new(len).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "cannot map zero bytes")
    })?;
    let prot = if writable {
        ProtFlags::PROT_READ | ProtFlags::PROT_WRITE
    } else {
        ProtFlags::PROT_READ
    };
    // SAFETY: a fresh mapping chosen by the kernel (no address hint) cannot alias any Rust
    // object; the fd is valid for the call.
    let ptr = unsafe { mman::mmap(None, size, prot, MapFlags::MAP_SHARED, fd, 0)? };
    Ok(Mapping { ptr, len })
}

/// A contiguous range of address space: directory pages followed by whole segments mapped at
/// fixed offsets. This is how an engine's input (or output) becomes *one* buffer without
/// copying a byte of any segment.
#[derive(Debug)]
pub struct Arena {
    base: NonNull<c_void>,
    len: usize,
    dir_len: usize,
    /// Offset of each placed segment from the arena start.
    placed: Vec<usize>,
    next: usize,
}

// SAFETY: see `Mapping`.
unsafe impl Send for Arena {}

pub fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as usize
    } else {
        4096
    }
}

impl Arena {
    /// Reserve `dir_len` bytes of private read-write directory followed by room for segments of
    /// the given sizes. Nothing is placed yet.
    pub fn reserve(dir_len: usize, segment_lens: &[usize]) -> std::io::Result<Arena> {
        let page = page_size();
        let dir_len = crate::layout::align_up(dir_len.max(1), page);
        // One PROT_NONE guard page after every segment: an engine that writes past the end of
        // its view faults instead of silently scribbling on a neighbour.
        let total = dir_len
            + segment_lens
                .iter()
                .map(|l| crate::layout::align_up(*l, page) + page)
                .sum::<usize>();
        let size = NonZeroUsize::new(total).expect("dir_len is at least one page");
        // SAFETY: an anonymous PROT_NONE reservation chosen by the kernel aliases nothing.
        let base = unsafe {
            mman::mmap_anonymous(
                None,
                size,
                ProtFlags::PROT_NONE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE,
            )?
        };
        let arena = Arena {
            base,
            len: total,
            dir_len,
            placed: Vec::new(),
            next: dir_len,
        };
        // SAFETY: base..base+dir_len lies inside our own reservation, so MAP_FIXED replaces only
        // pages this arena owns.
        unsafe {
            mman::mmap_anonymous(
                Some(NonZeroUsize::new(base.as_ptr() as usize).expect("mmap never returns null")),
                NonZeroUsize::new(dir_len).expect("non-zero"),
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_FIXED,
            )?;
        }
        Ok(arena)
    }

    /// Map a segment at the next free place; returns its offset from the arena start.
    pub fn place(&mut self, fd: &OwnedFd, len: usize, writable: bool) -> std::io::Result<usize> {
        let page = page_size();
        let room = crate::layout::align_up(len, page) + page;
        if self.next + room > self.len {
            return Err(std::io::Error::other("arena is full"));
        }
        let prot = if writable {
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE
        } else {
            ProtFlags::PROT_READ
        };
        let at = self.base.as_ptr() as usize + self.next;
        // SAFETY: at..at+len lies inside this arena's reservation (checked above), so MAP_FIXED
        // replaces only PROT_NONE pages we own; nothing in Rust refers to them.
        unsafe {
            mman::mmap(
                Some(NonZeroUsize::new(at).expect("non-null")),
                NonZeroUsize::new(len).ok_or_else(|| std::io::Error::other("empty segment"))?,
                prot,
                MapFlags::MAP_SHARED | MapFlags::MAP_FIXED,
                fd,
                0,
            )?;
        }
        let offset = self.next;
        self.placed.push(offset);
        self.next += room;
        Ok(offset)
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.base.as_ptr().cast()
    }

    /// Bytes from the arena start to the end of the last placed segment (its guard page
    /// excluded).
    pub fn used_len(&self) -> usize {
        if self.placed.is_empty() {
            self.dir_len
        } else {
            self.next - page_size()
        }
    }

    pub fn dir_len(&self) -> usize {
        self.dir_len
    }

    /// The directory pages, which only this process writes.
    pub fn directory_mut(&mut self) -> &mut [u8] {
        // SAFETY: the first dir_len bytes are a private read-write anonymous mapping owned by
        // self, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.as_ptr(), self.dir_len) }
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: base/len is exactly the reservation; unmapping it also removes every fixed
        // mapping placed inside it.
        let _ = unsafe { mman::munmap(self.base, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_reject_foreign_files() {
        let n = SegmentName {
            pid: 42,
            start_time: 7,
            seq: 3,
        };
        assert_eq!(n.file_name(), "livecalc.42.7.3");
        assert_eq!(SegmentName::parse(&n.shm_path()), Some(n));
        assert_eq!(SegmentName::parse("livecalc.1.2"), None);
        assert_eq!(SegmentName::parse("other.1.2.3"), None);
    }

    #[test]
    fn own_process_is_alive_and_a_made_up_owner_is_gone() {
        let me = std::process::id();
        let start = process_start_time(me).unwrap();
        let live = SegmentName {
            pid: me,
            start_time: start,
            seq: 0,
        };
        assert!(!live.owner_is_gone());
        let reused = SegmentName {
            start_time: start + 1,
            ..live
        };
        assert!(reused.owner_is_gone());
    }

    #[test]
    fn arena_places_segments_contiguously_without_copying() {
        let me = std::process::id();
        let name = SegmentName {
            pid: me,
            start_time: process_start_time(me).unwrap(),
            seq: 900_001,
        };
        let seg = OwnedSegment::create(name, 10_000).unwrap();
        // SAFETY: test-only write into our own fresh mapping.
        unsafe { *seg.mapping().as_ptr().add(9_999) = 0xAB };
        let (fd, len) = open_segment(&name.file_name(), false).unwrap();
        assert_eq!(len, 10_000);
        let mut arena = Arena::reserve(100, &[len]).unwrap();
        let at = arena.place(&fd, len, false).unwrap();
        assert_eq!(at, page_size());
        // SAFETY: the byte lies inside the placed read-only mapping.
        let seen = unsafe { *arena.as_ptr().add(at + 9_999) };
        assert_eq!(seen, 0xAB);
        // The writer changes the byte; the arena sees it: the same physical page, no copy.
        // SAFETY: as above.
        unsafe { *seg.mapping().as_ptr().add(9_999) = 0xCD };
        // SAFETY: as above.
        assert_eq!(unsafe { *arena.as_ptr().add(at + 9_999) }, 0xCD);
        arena.directory_mut()[0] = 1;
    }
}
