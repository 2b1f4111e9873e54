//! hablock's configuration file. TO BE WRITTEN (config work).
