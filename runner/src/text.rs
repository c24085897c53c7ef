//! Cutting text to a size, saying so: what a guest hands the host (log lines, errors) and
//! what the runner stores (attempt errors) is kept to a bound.

use std::borrow::Cow;

/// `text` cut to at most `max` bytes on a character boundary, followed by a note of how long
/// it was; `text` itself if it fits.
pub fn clip(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    clip_part(text, max, text.len()).into()
}

/// `part`, the start of a text `total` bytes long, cut to at most `max` bytes on a character
/// boundary and followed by the note of the whole's length.
pub fn clip_part(part: &str, max: usize, total: usize) -> String {
    let end = part.floor_char_boundary(max);
    format!("{}… [cut: {total} bytes in all]", &part[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_on_a_char_boundary_saying_how_long_it_was() {
        assert_eq!(clip("short", 8), "short");
        let long = "é".repeat(100);
        let clipped = clip(&long, 51);
        assert!(clipped.starts_with(&"é".repeat(25)));
        assert!(clipped.ends_with("… [cut: 200 bytes in all]"), "{clipped}");
    }
}
