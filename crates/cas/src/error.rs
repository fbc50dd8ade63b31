use crate::id::ObjectId;

#[derive(Debug, thiserror::Error)]
pub enum CasError {
    // Transparent: the cause is said once however the error is printed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("object {0} not found")]
    NotFound(ObjectId),
    #[error("object {id} is corrupt: {why}")]
    Corrupt { id: ObjectId, why: String },
    #[error("pack file is corrupt: {0}")]
    BadPack(String),
}

impl From<CasError> for std::io::Error {
    fn from(e: CasError) -> Self {
        match e {
            CasError::Io(e) => e,
            CasError::NotFound(_) => std::io::Error::new(std::io::ErrorKind::NotFound, e),
            other => std::io::Error::new(std::io::ErrorKind::InvalidData, other),
        }
    }
}
