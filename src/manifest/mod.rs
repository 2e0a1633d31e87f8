//! HLS and DASH manifest reading (m3u8-rs, dash-mpd-core).
