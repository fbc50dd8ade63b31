//! The measurement: for every method, what the new closure consists of (its units: NARs, files,
//! chunks, manifests, each with its really compressed size) and which of those units the old
//! closure already provides.

use std::collections::HashSet;
use std::io::{self, BufReader, Read};

use rayon::prelude::*;
use refstrip_cas::{Chunker, CHUNK_THRESHOLD};
use refstrip_nar::{Event, NarReader};
use refstrip_nix::{HashingReader, NarInfo};
use refstrip_source::NarSource;
use refstrip_strip::{ContentDigest, ContentSink, StripOptions};
use serde::Serialize;

use crate::codec::{Codec, SizeCache, StreamSize};
use crate::SavingsError;

/// A way of substituting store paths, i.e. the unit a client fetches and how it is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    /// Whole NARs, xz (what `cache.nixos.org` serves): the baseline.
    NarXz,
    NarZstd,
    /// Whole files deduplicated by content, uncompressed.
    File,
    /// Each unique file compressed on its own.
    FileXz,
    FileZstd,
    /// FastCDC 16/64/256 KiB over the NAR stream, each unique chunk compressed on its own (casync,
    /// attic).
    CdcNarZstd,
    /// refstrip's normalized files, uncompressed, plus each path's manifest.
    StrippedFile,
    StrippedFileZstd,
    /// refstrip's store layout: normalized files up to 256 KiB whole, larger ones in FastCDC chunks
    /// plus a chunk list, each object compressed on its own, plus each path's manifest.
    StrippedCdcZstd,
    /// As above with ELF build-ids left in the contents (`normalize_build_id: false`).
    StrippedFileZstdKeepBuildId,
    StrippedCdcZstdKeepBuildId,
    /// `stripped-cdc-zstd` for a client holding the old closure in its Nix store, with the deltas a
    /// refstrip store offers (spec §8): a changed file paired with its predecessor's comes as a
    /// delta from it instead of its objects.
    StrippedCdcZstdDelta,
}

impl Method {
    pub const ALL: [Method; 12] = [
        Method::NarXz,
        Method::NarZstd,
        Method::File,
        Method::FileXz,
        Method::FileZstd,
        Method::CdcNarZstd,
        Method::StrippedFile,
        Method::StrippedFileZstd,
        Method::StrippedCdcZstd,
        Method::StrippedFileZstdKeepBuildId,
        Method::StrippedCdcZstdKeepBuildId,
        Method::StrippedCdcZstdDelta,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::NarXz => "nar-xz",
            Method::NarZstd => "nar-zstd",
            Method::File => "file",
            Method::FileXz => "file-xz",
            Method::FileZstd => "file-zstd",
            Method::CdcNarZstd => "cdc-nar-zstd",
            Method::StrippedFile => "stripped-file",
            Method::StrippedFileZstd => "stripped-file-zstd",
            Method::StrippedCdcZstd => "stripped-cdc-zstd",
            Method::StrippedFileZstdKeepBuildId => "stripped-file-zstd-keep-build-id",
            Method::StrippedCdcZstdKeepBuildId => "stripped-cdc-zstd-keep-build-id",
            Method::StrippedCdcZstdDelta => "stripped-cdc-zstd-delta",
        }
    }

    pub fn parse(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.name() == name)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    fn is_raw(self) -> bool {
        matches!(
            self,
            Method::File | Method::FileXz | Method::FileZstd | Method::CdcNarZstd
        )
    }
}

/// One closure as measured.
#[derive(Debug, Clone, Serialize)]
pub struct Side {
    pub source: String,
    pub paths: usize,
    pub nar_bytes: u64,
}

/// One method's result, in bytes: the study's columns.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub method: String,
    /// Every unique unit of the new closure.
    pub closure: u64,
    /// The units of the new closure that the old closure does not have.
    pub downloaded: u64,
    /// `closure - downloaded`.
    pub reused: u64,
    /// How many units (NARs, files, chunks, manifests) make up `closure` and `downloaded`.
    pub closure_units: u64,
    pub downloaded_units: u64,
    /// `100 * (1 - downloaded / baseline downloaded)`; none when the baseline downloads nothing.
    pub savings_percent: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub old: Side,
    pub new: Side,
    /// The method savings are relative to: nar-xz if measured, else the first method.
    pub baseline: String,
    pub rows: Vec<Row>,
}

/// Progress events for a caller's progress bars.
pub enum Progress<'a> {
    /// Measuring one closure starts: its name ("old" or "new"), paths and NAR bytes.
    Begin {
        side: &'a str,
        paths: u64,
        bytes: u64,
    },
    /// One path of the current closure is done.
    Path { nar_size: u64 },
}

pub(crate) type Unit = ([u8; 32], u64);
pub(crate) type Units = Vec<Vec<Unit>>;

fn no_units() -> Units {
    vec![Vec::new(); Method::ALL.len()]
}

/// Measure `methods` (in that order) for the new closure against the old one.
pub fn measure(
    old: (&dyn NarSource, &[NarInfo]),
    new: (&dyn NarSource, &[NarInfo]),
    methods: &[Method],
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Report, SavingsError> {
    if methods.is_empty() {
        return Err(SavingsError::invalid("methods", "no method to measure"));
    }
    let cache = SizeCache::default();
    // The old closure only needs its unit names: what it provides, not what it cost.
    let old_units = side_units(old, methods, false, &cache, "old", progress)?;
    let mut new_units = side_units(new, methods, true, &cache, "new", progress)?;
    if methods.contains(&Method::StrippedCdcZstdDelta) {
        crate::deltas::apply(old, new, &old_units, &mut new_units)?;
    }

    let (rows, base) = rows(methods, &old_units, &new_units);
    let side = |(source, infos): (&dyn NarSource, &[NarInfo])| Side {
        source: source.describe(),
        paths: infos.len(),
        nar_bytes: infos.iter().map(|i| i.nar_size).sum(),
    };
    Ok(Report {
        old: side(old),
        new: side(new),
        baseline: base.name().to_string(),
        rows,
    })
}

/// One row per method from the units of every path of both closures, and the baseline method.
fn rows(methods: &[Method], old_units: &[Units], new_units: &[Units]) -> (Vec<Row>, Method) {
    let mut rows = Vec::new();
    for &m in methods {
        let have: HashSet<[u8; 32]> = old_units
            .iter()
            .flat_map(|u| u[m.index()].iter().map(|(k, _)| *k))
            .collect();
        let mut seen = HashSet::new();
        let (mut closure, mut downloaded, mut closure_units, mut downloaded_units) = (0, 0, 0, 0);
        for (key, size) in new_units.iter().flat_map(|u| &u[m.index()]) {
            if seen.insert(*key) {
                closure += size;
                closure_units += 1;
                if !have.contains(key) {
                    downloaded += size;
                    downloaded_units += 1;
                }
            }
        }
        rows.push(Row {
            method: m.name().to_string(),
            closure,
            downloaded,
            reused: closure - downloaded,
            closure_units,
            downloaded_units,
            savings_percent: None,
        });
    }
    let base = methods
        .iter()
        .position(|&m| m == Method::NarXz)
        .unwrap_or(0);
    let base_down = rows[base].downloaded;
    for row in &mut rows {
        row.savings_percent =
            (base_down > 0).then(|| 100.0 * (1.0 - row.downloaded as f64 / base_down as f64));
    }
    (rows, methods[base])
}

fn side_units(
    (source, infos): (&dyn NarSource, &[NarInfo]),
    methods: &[Method],
    sizes: bool,
    cache: &SizeCache,
    side: &str,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Vec<Units>, SavingsError> {
    progress(Progress::Begin {
        side,
        paths: infos.len() as u64,
        bytes: infos.iter().map(|i| i.nar_size).sum(),
    });
    // One path per task, so a worker stuck on the largest paths does not leave the others idle.
    infos
        .par_iter()
        .with_max_len(1)
        .map(|info| {
            let units = path_units(source, info, methods, sizes, cache).map_err(|e| match e {
                SavingsError::Io { what, error } => SavingsError::Io {
                    what: format!("{}: {what}", info.store_path),
                    error,
                },
                e => e,
            })?;
            progress(Progress::Path {
                nar_size: info.nar_size,
            });
            Ok(units)
        })
        .collect()
}

/// Which of `methods` a pass over one NAR serves.
fn wanted(methods: &[Method], m: Method) -> Option<Method> {
    methods.contains(&m).then_some(m)
}

fn path_units(
    source: &dyn NarSource,
    info: &NarInfo,
    methods: &[Method],
    sizes: bool,
    cache: &SizeCache,
) -> Result<Units, SavingsError> {
    let mut units = no_units();
    let path_key = *blake3::hash(info.store_path.to_string().as_bytes()).as_bytes();
    // Nix substitutes by store path: a path the old closure has is not fetched again.
    let nar_codecs: Vec<(Method, Codec)> =
        [(Method::NarXz, Codec::Xz), (Method::NarZstd, Codec::Zstd)]
            .into_iter()
            .filter(|(m, _)| methods.contains(m))
            .collect();
    if !sizes {
        for (m, _) in &nar_codecs {
            units[m.index()].push((path_key, 0));
        }
    }
    let measure_nar = sizes && !nar_codecs.is_empty();
    if measure_nar || methods.iter().any(|m| m.is_raw()) {
        let nar = NarMeter::new(
            if sizes { &nar_codecs } else { &[] },
            wanted(methods, Method::CdcNarZstd),
            sizes,
            cache,
        )?;
        let files = FileMeter::new(
            [
                wanted(methods, Method::File),
                wanted(methods, Method::FileXz),
                wanted(methods, Method::FileZstd),
                // CDC here is over the NAR stream (the NarMeter), not per file.
                None,
            ],
            sizes,
            cache,
        );
        raw_pass(source, info, nar, files, path_key, &mut units)?;
    }
    for (normalize_build_id, file, file_zstd, cdc) in [
        (
            true,
            wanted(methods, Method::StrippedFile),
            wanted(methods, Method::StrippedFileZstd),
            // The delta method starts from these units (see `deltas`).
            wanted(methods, Method::StrippedCdcZstd).or(wanted(
                methods,
                Method::StrippedCdcZstdDelta,
            )
            .map(|_| Method::StrippedCdcZstd)),
        ),
        (
            false,
            None,
            wanted(methods, Method::StrippedFileZstdKeepBuildId),
            wanted(methods, Method::StrippedCdcZstdKeepBuildId),
        ),
    ] {
        if file.is_none() && file_zstd.is_none() && cdc.is_none() {
            continue;
        }
        let meter = FileMeter::new([file, None, file_zstd, cdc], sizes, cache);
        let options = StripOptions { normalize_build_id };
        strip_pass(source, info, &options, meter, &mut units)?;
    }
    if methods.contains(&Method::StrippedCdcZstdDelta) {
        units[Method::StrippedCdcZstdDelta.index()] =
            units[Method::StrippedCdcZstd.index()].clone();
    }
    Ok(units)
}

fn io_err(what: &str) -> impl FnOnce(io::Error) -> SavingsError + '_ {
    move |source| SavingsError::Io {
        what: what.to_string(),
        error: source,
    }
}

fn check_nar(info: &NarInfo, hash: &[u8; 32], size: u64) -> Result<(), SavingsError> {
    if hash != info.nar_hash.as_bytes() || size != info.nar_size {
        return Err(SavingsError::invalid(
            info.store_path.to_string(),
            format!(
                "the NAR read ({size} bytes) does not match the narinfo's NarHash/NarSize ({} bytes)",
                info.nar_size
            ),
        ));
    }
    Ok(())
}

/// Read the NAR as is: the NAR-level meters see every byte, the file meter every file.
fn raw_pass(
    source: &dyn NarSource,
    info: &NarInfo,
    nar: NarMeter,
    mut files: FileMeter,
    path_key: [u8; 32],
    units: &mut Units,
) -> Result<(), SavingsError> {
    let stream = source.nar(info)?;
    let tee = BufReader::with_capacity(
        1 << 20,
        Tee {
            inner: stream,
            meter: nar,
        },
    );
    let mut reader = NarReader::new(HashingReader::new(tee));
    while let Some(event) = reader
        .next_event()
        .map_err(|e| SavingsError::invalid(info.store_path.to_string(), e.to_string()))?
    {
        if let Event::File { size, .. } = event {
            files.begin(size).map_err(io_err("file"))?;
            let mut hasher = blake3::Hasher::new();
            loop {
                let chunk = reader.content_chunk().map_err(|e| {
                    SavingsError::invalid(info.store_path.to_string(), e.to_string())
                })?;
                if chunk.is_empty() {
                    break;
                }
                hasher.update(chunk);
                files.write(chunk).map_err(io_err("file"))?;
            }
            files
                .end(&ContentDigest(*hasher.finalize().as_bytes()))
                .map_err(io_err("file"))?;
        }
    }
    let (hash, size, mut tee) = reader.into_inner().finish();
    check_nar(info, hash.as_bytes(), size)?;
    // Counted, not collected: a hostile stream may go on for ever after the NAR.
    let rest = io::copy(&mut tee.by_ref().take(1 << 20), &mut io::sink()).map_err(io_err("NAR"))?;
    if rest > 0 {
        return Err(SavingsError::invalid(
            info.store_path.to_string(),
            "bytes after the end of the NAR",
        ));
    }
    tee.into_inner()
        .meter
        .finish(path_key, units)
        .map_err(io_err("NAR"))?;
    files.merge_into(units);
    Ok(())
}

/// Strip the NAR; the file meter sees the normalized contents, and the path's format 2 record is
/// two units (a client needs both to restore the path, spec §8): its binding, and its shape, which
/// a client that has the shape of the path's predecessor (a mass rebuild) does not download again.
fn strip_pass(
    source: &dyn NarSource,
    info: &NarInfo,
    options: &StripOptions,
    mut files: FileMeter,
    units: &mut Units,
) -> Result<(), SavingsError> {
    let what = info.store_path.to_string();
    let manifest = refstrip_read::pathinfo::strip_nar(source.nar(info)?, info, options, &mut files)
        .map_err(|e| SavingsError::invalid(&what, e.to_string()))?;
    let binding = manifest
        .binding()
        .map_err(|e| SavingsError::invalid(&what, e.to_string()))?;
    let shape = manifest.shape_body();
    let [plain, _, zstd, cdc] = files.methods;
    for unit in [binding, shape] {
        let key = *blake3::hash(&unit).as_bytes();
        // A binding is hashes and numbers: it is sent as it is.
        let compressed = if !files.sizes {
            0
        } else if unit.starts_with(refstrip_strip::BINDING_MAGIC) {
            unit.len() as u64
        } else {
            files
                .cache
                .size_of(Codec::Zstd, &key, &unit)
                .map_err(io_err("shape"))?
        };
        let raw = if files.sizes { unit.len() as u64 } else { 0 };
        for (m, size) in [(plain, raw), (zstd, compressed), (cdc, compressed)] {
            if let Some(m) = m {
                files.units[m.index()].push((key, size));
            }
        }
    }
    files.merge_into(units);
    Ok(())
}

/// Passes the NAR stream through to its reader while feeding the NAR-level meters.
struct Tee<'c, R> {
    inner: R,
    meter: NarMeter<'c>,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.meter.feed(&buf[..n])?;
        Ok(n)
    }
}

/// A unit for one chunk or small object: named by its BLAKE3, sized by compressing it.
fn object_unit(cache: &SizeCache, sizes: bool, data: &[u8]) -> io::Result<Unit> {
    let key = *blake3::hash(data).as_bytes();
    let size = if sizes {
        cache.size_of(Codec::Zstd, &key, data)?
    } else {
        0
    };
    Ok((key, size))
}

/// Whole-NAR compressed sizes and CDC chunks of the NAR stream.
struct NarMeter<'c> {
    streams: Vec<(Method, StreamSize)>,
    cdc: Option<(Method, Chunker)>,
    chunks: Vec<Unit>,
    sizes: bool,
    cache: &'c SizeCache,
}

impl<'c> NarMeter<'c> {
    fn new(
        codecs: &[(Method, Codec)],
        cdc: Option<Method>,
        sizes: bool,
        cache: &'c SizeCache,
    ) -> Result<Self, SavingsError> {
        let streams = codecs
            .iter()
            .map(|&(m, codec)| Ok((m, StreamSize::new(codec)?)))
            .collect::<io::Result<_>>()
            .map_err(io_err("compressor"))?;
        Ok(NarMeter {
            streams,
            cdc: cdc.map(|m| (m, Chunker::default())),
            chunks: Vec::new(),
            sizes,
            cache,
        })
    }

    fn feed(&mut self, data: &[u8]) -> io::Result<()> {
        for (_, s) in &mut self.streams {
            s.write(data)?;
        }
        let NarMeter {
            cdc,
            chunks,
            sizes,
            cache,
            ..
        } = self;
        if let Some((_, chunker)) = cdc {
            chunker.feed(data, &mut |c: &[u8]| {
                chunks.push(object_unit(cache, *sizes, c)?);
                Ok::<(), io::Error>(())
            })?;
        }
        Ok(())
    }

    fn finish(self, path_key: [u8; 32], units: &mut Units) -> io::Result<()> {
        for (m, s) in self.streams {
            units[m.index()].push((path_key, s.finish()?));
        }
        if let Some((m, chunker)) = self.cdc {
            let mut chunks = self.chunks;
            chunker.finish(&mut |c: &[u8]| {
                chunks.push(object_unit(self.cache, self.sizes, c)?);
                Ok::<(), io::Error>(())
            })?;
            units[m.index()].extend(chunks);
        }
        Ok(())
    }
}

/// Per-file units of one NAR's files (original or normalized): for up to four methods, the whole
/// file uncompressed, xz, zstd, and refstrip's object layout (blob, or chunks plus a chunk list).
struct FileMeter<'c> {
    /// plain, xz, zstd, cdc
    methods: [Option<Method>; 4],
    sizes: bool,
    cache: &'c SizeCache,
    units: Units,
    size: u64,
    /// A small file's bytes: its compressed sizes can come from the cache once its digest is known.
    small: Vec<u8>,
    large: Option<Large>,
}

/// A file larger than one chunk, measured while it streams by.
struct Large {
    xz: Option<StreamSize>,
    zstd: Option<StreamSize>,
    chunker: Option<Chunker>,
    /// Each chunk's unit and uncompressed length (the chunk list records the latter).
    chunks: Vec<(Unit, u64)>,
}

impl<'c> FileMeter<'c> {
    fn new(methods: [Option<Method>; 4], sizes: bool, cache: &'c SizeCache) -> Self {
        FileMeter {
            methods,
            sizes,
            cache,
            units: no_units(),
            size: 0,
            small: Vec::new(),
            large: None,
        }
    }

    fn merge_into(self, units: &mut Units) {
        for (all, mine) in units.iter_mut().zip(self.units) {
            all.extend(mine);
        }
    }

    fn push(&mut self, m: Option<Method>, unit: Unit) {
        if let Some(m) = m {
            self.units[m.index()].push(unit);
        }
    }
}

impl ContentSink for FileMeter<'_> {
    fn begin(&mut self, size: u64) -> io::Result<()> {
        self.size = size;
        self.small.clear();
        self.large = None;
        if size > CHUNK_THRESHOLD as u64 {
            let [_, xz, zstd, cdc] = self.methods;
            let stream = |m: Option<Method>, codec| -> io::Result<Option<StreamSize>> {
                (m.is_some() && self.sizes)
                    .then(|| StreamSize::new(codec))
                    .transpose()
            };
            self.large = Some(Large {
                xz: stream(xz, Codec::Xz)?,
                zstd: stream(zstd, Codec::Zstd)?,
                chunker: cdc.map(|_| Chunker::default()),
                chunks: Vec::new(),
            });
        }
        Ok(())
    }

    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        let Some(large) = &mut self.large else {
            self.small.extend_from_slice(data);
            return Ok(());
        };
        for s in [&mut large.xz, &mut large.zstd].into_iter().flatten() {
            s.write(data)?;
        }
        if let Some(chunker) = &mut large.chunker {
            let (cache, sizes, chunks) = (self.cache, self.sizes, &mut large.chunks);
            chunker.feed(data, &mut |c: &[u8]| {
                chunks.push((object_unit(cache, sizes, c)?, c.len() as u64));
                Ok::<(), io::Error>(())
            })?;
        }
        Ok(())
    }

    fn end(&mut self, digest: &ContentDigest) -> io::Result<()> {
        let d = digest.0;
        let [plain, xz, zstd, cdc] = self.methods;
        let sizes = self.sizes;
        self.push(plain, (d, if sizes { self.size } else { 0 }));
        let Some(large) = self.large.take() else {
            let small = std::mem::take(&mut self.small);
            // refstrip stores a small file as one blob: the same unit as the compressed file.
            for (m, codec) in [(xz, Codec::Xz), (zstd, Codec::Zstd), (cdc, Codec::Zstd)] {
                if m.is_some() {
                    let size = if sizes {
                        self.cache.size_of(codec, &d, &small)?
                    } else {
                        0
                    };
                    self.push(m, (d, size));
                }
            }
            self.small = small;
            return Ok(());
        };
        for (m, stream, codec) in [(xz, large.xz, Codec::Xz), (zstd, large.zstd, Codec::Zstd)] {
            if m.is_some() {
                let size = match stream {
                    Some(s) => s.finish()?,
                    None => 0,
                };
                if sizes {
                    self.cache.put(codec, d, size);
                }
                self.push(m, (d, size));
            }
        }
        if let (Some(m), Some(chunker)) = (cdc, large.chunker) {
            let mut chunks = large.chunks;
            chunker.finish(&mut |c: &[u8]| {
                chunks.push((object_unit(self.cache, sizes, c)?, c.len() as u64));
                Ok::<(), io::Error>(())
            })?;
            let list = chunk_list(&chunks);
            let list_size = if sizes {
                crate::codec::compressed_size(Codec::Zstd, &list)?
            } else {
                0
            };
            self.units[m.index()].extend(chunks.into_iter().map(|(unit, _)| unit));
            // The chunk list is named by the whole file's digest, as in a refstrip store.
            self.push(Some(m), (d, list_size));
        }
        Ok(())
    }
}

/// A chunk list as refstrip encodes it (spec/normalized-format.md §5): count, then digest and size
/// of each chunk.
fn chunk_list(chunks: &[(Unit, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunks.len() * 36 + 4);
    refstrip_strip::varint::put(&mut out, chunks.len() as u64);
    for ((digest, _), size) in chunks {
        out.extend_from_slice(digest);
        refstrip_strip::varint::put(&mut out, *size);
    }
    out
}

impl Report {
    /// The study's table, in bytes.
    pub fn table(&self) -> String {
        let mut s = format!(
            "old: {} ({} paths, {} NAR bytes)\nnew: {} ({} paths, {} NAR bytes)\n\n",
            self.old.source,
            self.old.paths,
            group(self.old.nar_bytes),
            self.new.source,
            self.new.paths,
            group(self.new.nar_bytes)
        );
        let width = self
            .rows
            .iter()
            .map(|r| r.method.len())
            .max()
            .unwrap_or(6)
            .max(6);
        s.push_str(&format!(
            "{:<width$}  {:>15}  {:>15}  {:>15}  {:>8}\n",
            "method", "closure", "downloaded", "re-used", "savings"
        ));
        for r in &self.rows {
            let savings = r
                .savings_percent
                .map(|p| format!("{p:.1} %"))
                .unwrap_or_else(|| "-".into());
            s.push_str(&format!(
                "{:<width$}  {:>15}  {:>15}  {:>15}  {:>8}\n",
                r.method,
                group(r.closure),
                group(r.downloaded),
                group(r.reused),
                savings
            ));
        }
        s.push_str(&format!(
            "(bytes; savings: downloaded vs {})\n",
            self.baseline
        ));
        s
    }
}

/// 1234567 -> "1,234,567".
fn group(n: u64) -> String {
    let digits = n.to_string();
    let groups: Vec<&str> = digits
        .as_bytes()
        .rchunks(3)
        .rev()
        .map(|g| std::str::from_utf8(g).expect("ASCII digits"))
        .collect();
    groups.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_names_round_trip() {
        for m in Method::ALL {
            assert_eq!(Method::parse(m.name()), Some(m));
            assert_eq!(Method::ALL[m.index()], m);
        }
        assert_eq!(Method::parse("nar"), None);
    }

    fn units(m: Method, list: &[(u8, u64)]) -> Units {
        let mut u = no_units();
        u[m.index()] = list.iter().map(|&(k, size)| ([k; 32], size)).collect();
        u
    }

    #[test]
    fn rows_count_unique_units_and_only_download_what_old_lacks() {
        let old = [units(Method::File, &[(1, 0), (2, 0)])];
        // Unit 3 twice (two paths share a file): counted once; 1 is re-used; 3 and 4 are new.
        let new = [
            units(Method::File, &[(1, 10), (3, 20)]),
            units(Method::File, &[(3, 20), (4, 5)]),
        ];
        let (rows, base) = rows(&[Method::File], &old, &new);
        assert_eq!(
            base,
            Method::File,
            "without nar-xz the first method is the baseline"
        );
        let r = &rows[0];
        assert_eq!((r.closure, r.downloaded, r.reused), (35, 25, 10));
        assert_eq!((r.closure_units, r.downloaded_units), (3, 2));
        assert_eq!(r.savings_percent, Some(0.0));
    }

    #[test]
    fn savings_are_relative_to_nar_xz_and_absent_when_it_downloads_nothing() {
        let mut new = units(Method::NarXz, &[(1, 100)]);
        new[Method::File.index()] = vec![([2; 32], 25)];
        let (first, base) = rows(&[Method::File, Method::NarXz], &[], &[new.clone()]);
        assert_eq!(base, Method::NarXz);
        assert_eq!(first[0].savings_percent, Some(75.0));
        let old = [units(Method::NarXz, &[(1, 0)])];
        let (second, _) = rows(&[Method::File, Method::NarXz], &old, &[new]);
        assert_eq!(second[0].savings_percent, None);
    }

    #[test]
    fn file_meter_makes_one_blob_per_small_file_and_chunks_plus_a_list_per_large_one() {
        let cache = SizeCache::default();
        let methods = [
            Some(Method::StrippedFile),
            None,
            Some(Method::StrippedFileZstd),
            Some(Method::StrippedCdcZstd),
        ];
        let mut meter = FileMeter::new(methods, true, &cache);
        let mut x = 1u32;
        let large: Vec<u8> = (0..1_000_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        for file in [&b"small"[..], &large] {
            meter.begin(file.len() as u64).unwrap();
            for piece in file.chunks(4096) {
                meter.write(piece).unwrap();
            }
            meter.end(&ContentDigest::of(file)).unwrap();
        }
        let u = &meter.units;
        assert_eq!(u[Method::StrippedFile.index()].len(), 2);
        assert_eq!(u[Method::StrippedFile.index()][1].1, 1_000_000);
        assert_eq!(u[Method::StrippedFileZstd.index()].len(), 2);
        let cdc = &u[Method::StrippedCdcZstd.index()];
        // The small blob, at least 4 chunks of at most 256 KiB, and the chunk list.
        assert!(cdc.len() >= 6, "{}", cdc.len());
        assert_eq!(cdc[0], u[Method::StrippedFileZstd.index()][0]);
        assert_eq!(cdc.last().unwrap().0, ContentDigest::of(&large).0);
        // Random bytes do not compress: chunk sizes add up to about the file.
        let chunk_bytes: u64 = cdc[1..cdc.len() - 1].iter().map(|(_, s)| s).sum();
        assert!(chunk_bytes >= 1_000_000, "{chunk_bytes}");
    }

    #[test]
    fn grouping() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1234567), "1,234,567");
    }

    #[test]
    fn chunk_list_matches_refstrip_encoding() {
        let chunks = [(([1u8; 32], 9), 300u64), (([2u8; 32], 9), 5u64)];
        let list = chunk_list(&chunks);
        let decoded = refstrip_cas::decode_chunk_list(&list).unwrap();
        assert_eq!(
            decoded,
            vec![(ContentDigest([1; 32]), 300), (ContentDigest([2; 32]), 5)]
        );
    }
}
