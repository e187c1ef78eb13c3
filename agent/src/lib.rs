//! Sextant node agent (work in progress, issue 5).
