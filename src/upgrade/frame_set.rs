//! A set of frame indices as it crosses the hand-over channel: a bitmap
//! from its lowest index, base64 in the JSON message. Every step of a
//! step-by-step upgrade hands half of one side's free frames to the other
//! (tens of thousands of indices); as a JSON array of numbers that took
//! milliseconds to write and parse inside the vNIC's blackout, as a bitmap
//! it is an eighth of a byte per frame of the span.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Most frame indices a set may span: the most frames a pool holds
/// (`control::pool_sizing::MAX_FRAMES`) with room for its large class.
pub const MAX_SPAN: u32 = 1 << 23;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameSetError {
    #[error("frame set: not base64")]
    Encoding,
    #[error("frame set: spans {0} frames, more than {MAX_SPAN}")]
    TooWide(u64),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameSet {
    /// The lowest index the bitmap covers.
    from: u32,
    /// Bit `i` of byte `i / 8` (least significant first): frame `from + i`.
    bits: String,
}

impl FrameSet {
    /// The set of `frames` (a duplicate counts once).
    pub fn new(frames: &[u32]) -> Result<Self, FrameSetError> {
        let (Some(&lo), Some(&hi)) = (frames.iter().min(), frames.iter().max()) else {
            return Ok(Self::default());
        };
        let span = u64::from(hi - lo) + 1;
        if span > u64::from(MAX_SPAN) {
            return Err(FrameSetError::TooWide(span));
        }
        let mut bytes = vec![0u8; span.div_ceil(8) as usize];
        for &f in frames {
            let i = (f - lo) as usize;
            bytes[i / 8] |= 1 << (i % 8);
        }
        Ok(Self {
            from: lo,
            bits: STANDARD.encode(bytes),
        })
    }

    /// The frames, lowest first.
    pub fn frames(&self) -> Result<Vec<u32>, FrameSetError> {
        // Checked before decoding, so a huge string costs nothing.
        let bytes_at_most = self.bits.len() / 4 * 3;
        if bytes_at_most as u64 * 8 > u64::from(MAX_SPAN) + 16 {
            return Err(FrameSetError::TooWide(bytes_at_most as u64 * 8));
        }
        let bytes = STANDARD
            .decode(&self.bits)
            .map_err(|_| FrameSetError::Encoding)?;
        let span = bytes.len() as u64 * 8;
        if span > u64::from(MAX_SPAN) || u64::from(self.from) + span > 1 << 32 {
            return Err(FrameSetError::TooWide(span));
        }
        let mut frames = Vec::new();
        for (k, &b) in bytes.iter().enumerate() {
            let mut b = b;
            while b != 0 {
                let bit = b.trailing_zeros();
                frames.push(self.from + (k as u32) * 8 + bit);
                b &= b - 1;
            }
        }
        Ok(frames)
    }
}

/// Free frames of both classes, as one process of an upgrade hands them to
/// the other: lists of indices for a peer of hand-over protocol 4 or
/// earlier, bitmaps from 5.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FreeFrames {
    #[serde(default)]
    small: Vec<u32>,
    #[serde(default)]
    large: Vec<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sets: Option<(FrameSet, FrameSet)>,
}

impl FreeFrames {
    /// `small` and `large` for a peer of hand-over `protocol`.
    pub fn new(small: Vec<u32>, large: Vec<u32>, protocol: u32) -> Self {
        if protocol >= 5 {
            if let (Ok(s), Ok(l)) = (FrameSet::new(&small), FrameSet::new(&large)) {
                return Self {
                    sets: Some((s, l)),
                    ..Self::default()
                };
            }
        }
        Self {
            small,
            large,
            sets: None,
        }
    }

    /// The frames (small, large), in whichever form they came.
    pub fn frames(&self) -> Result<(Vec<u32>, Vec<u32>), FrameSetError> {
        match &self.sets {
            Some((s, l)) => Ok((s.frames()?, l.frames()?)),
            None => Ok((self.small.clone(), self.large.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_gives_back_its_frames_lowest_first_once_each() {
        let frames = [70_000, 5, 6, 4_000_000, 5, 64, 63];
        let set = FrameSet::new(&frames).unwrap();
        let json = serde_json::to_string(&set).unwrap();
        let back: FrameSet = serde_json::from_str(&json).unwrap();
        assert_eq!(
            back.frames().unwrap(),
            vec![5, 6, 63, 64, 70_000, 4_000_000]
        );
        assert_eq!(
            FrameSet::new(&[]).unwrap().frames().unwrap(),
            Vec::<u32>::new()
        );
    }

    #[test]
    fn forty_thousand_free_frames_take_a_few_kilobytes() {
        let frames: Vec<u32> = (0..92_000).filter(|i| i % 2 == 0 || i % 7 == 0).collect();
        let set = FrameSet::new(&frames).unwrap();
        assert!(set.bits.len() < 16_000, "{} bytes", set.bits.len());
        assert_eq!(set.frames().unwrap(), frames);
    }

    #[test]
    fn free_frames_travel_as_lists_to_protocol_4_and_as_sets_from_5() {
        let (small, large) = (vec![9, 3, 4], vec![70_001, 70_000]);
        let four = serde_json::to_value(FreeFrames::new(small.clone(), large.clone(), 4)).unwrap();
        assert_eq!(four["small"], serde_json::json!([9, 3, 4]), "{four}");
        assert!(four.get("sets").is_none(), "{four}");
        let five = serde_json::to_value(FreeFrames::new(small, large, 5)).unwrap();
        assert_eq!(five["small"], serde_json::json!([]), "{five}");
        for v in [four, five] {
            let back: FreeFrames = serde_json::from_value(v).unwrap();
            let (s, mut l) = back.frames().unwrap();
            let mut s = s;
            s.sort();
            l.sort();
            assert_eq!((s, l), (vec![3, 4, 9], vec![70_000, 70_001]));
        }
    }

    #[test]
    fn what_a_peer_sends_is_checked() {
        let bad = FrameSet {
            from: 0,
            bits: "not base64!".into(),
        };
        assert_eq!(bad.frames(), Err(FrameSetError::Encoding));
        let wide = FrameSet {
            from: 0,
            bits: "A".repeat(4 * (MAX_SPAN as usize / 8 / 3 + 2)),
        };
        assert!(matches!(wide.frames(), Err(FrameSetError::TooWide(_))));
        // Past the last index a u32 holds.
        let past = FrameSet {
            from: u32::MAX - 3,
            bits: STANDARD.encode([0xffu8]),
        };
        assert!(matches!(past.frames(), Err(FrameSetError::TooWide(_))));
        assert!(matches!(
            FrameSet::new(&[0, MAX_SPAN]),
            Err(FrameSetError::TooWide(_))
        ));
    }
}
