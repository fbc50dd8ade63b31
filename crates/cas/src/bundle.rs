//! A bundle: one stripped store path in a single pack file (its objects plus its manifest), as
//! written by `refstrip strip` and read by `refstrip restore`.

use std::io::{BufRead, Read, Seek, Write};

use refstrip_strip::{strip, Manifest, RefTable, StripOptions, Stripped};

use crate::error::CasError;
use crate::files::{FileSink, FileSource, ObjectRead};
use crate::id::{Kind, ObjectId};
use crate::pack::{PackReader, PackWriter};

/// What is known about the path besides its NAR (from its narinfo).
pub struct PathInfo {
    pub store_dir: Vec<u8>,
    pub refs: RefTable,
    pub references: Vec<Vec<u8>>,
    pub info: Vec<(String, String)>,
}

/// Strip `nar` into a bundle written to `out`. Returns the manifest and the strip result; the
/// caller compares `nar_hash`/`nar_size` with what the narinfo promised.
pub fn write_bundle<R: BufRead, W: Write>(
    nar: R,
    path: PathInfo,
    options: &StripOptions,
    level: i32,
    out: W,
) -> Result<(Manifest, Stripped, W), CasError> {
    let mut pack = PackWriter::new(out, level)?;
    let stripped = strip(nar, &path.refs, options, &mut FileSink::new(&mut pack))
        .map_err(|e| CasError::BadPack(format!("strip: {e}")))?;
    let manifest = Manifest {
        store_dir: path.store_dir,
        refs: path.refs,
        references: path.references,
        nar_hash: stripped.nar_hash,
        nar_size: stripped.nar_size,
        info: path.info,
        root: stripped.root.clone(),
    };
    let encoded = manifest.encode();
    pack.add(
        ObjectId::new(Kind::Manifest, refstrip_strip::ContentDigest::of(&encoded)),
        &encoded,
    )?;
    let (out, _) = pack.finish()?;
    Ok((manifest, stripped, out))
}

/// An opened bundle: its manifest and a source for its file contents.
pub struct Bundle<R> {
    pub manifest: Manifest,
    pub pack: PackReader<R>,
}

impl<R: Read + Seek> Bundle<R> {
    pub fn open(r: R) -> Result<Self, CasError> {
        let mut pack = PackReader::open(r)?;
        let mut manifests = pack
            .index()
            .keys()
            .filter(|id| id.kind == Kind::Manifest)
            .copied();
        let (Some(id), None) = (manifests.next(), manifests.next()) else {
            return Err(CasError::BadPack(
                "a bundle holds exactly one manifest".into(),
            ));
        };
        let bytes = pack.get(&id)?;
        let manifest = Manifest::decode(&bytes).map_err(|e| CasError::Corrupt {
            id,
            why: e.to_string(),
        })?;
        Ok(Bundle { manifest, pack })
    }

    pub fn source(&mut self) -> FileSource<'_, PackReader<R>> {
        FileSource::new(&mut self.pack)
    }
}
