//! rtpproxy control protocol wire format (sans-IO).
