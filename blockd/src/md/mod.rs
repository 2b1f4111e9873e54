//! On-disk metadata. TO BE WRITTEN (metadata work).
