//! ferry: resumable tus uploads from field devices.
