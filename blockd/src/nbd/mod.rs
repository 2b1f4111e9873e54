//! NBD frontend. TO BE WRITTEN (nbd work).
