//! What an image is made from: the request a user (or a recalled image) gives, validated before
//! anything is queued, and the scheduler names as A1111 writes them.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The longest prompt accepted, in characters. CLIP reads 75 tokens per chunk; this allows
/// many chunks and refuses pasted documents.
pub const MAX_PROMPT_CHARS: usize = 4000;
pub const MIN_SIDE: u32 = 64;
pub const MAX_SIDE: u32 = 2048;
pub const MAX_STEPS: u32 = 150;
pub const MAX_BATCH: u32 = 16;
/// Seeds are kept to 32 bits, as A1111 and ComfyUI show them; bigger ones would not survive
/// a round trip through their infotext readers.
pub const MAX_SEED: u64 = u32::MAX as u64;

/// The samplers. DDIM, Euler, DPM++ 2M (Karras), UniPC and LCM are deterministic given the
/// seed; Euler a and LCM draw their extra noise from the same seeded host RNG, so they are too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scheduler {
    Ddim,
    Euler,
    EulerAncestral,
    #[serde(rename = "dpmpp_2m_karras")]
    DpmPp2mKarras,
    #[serde(rename = "dpmpp_2m")]
    DpmPp2m,
    #[serde(rename = "unipc")]
    UniPc,
    Lcm,
}

impl Scheduler {
    pub const ALL: [Scheduler; 7] = [
        Scheduler::DpmPp2mKarras,
        Scheduler::DpmPp2m,
        Scheduler::UniPc,
        Scheduler::Euler,
        Scheduler::EulerAncestral,
        Scheduler::Ddim,
        Scheduler::Lcm,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Scheduler::Ddim => "ddim",
            Scheduler::Euler => "euler",
            Scheduler::EulerAncestral => "euler_ancestral",
            Scheduler::DpmPp2mKarras => "dpmpp_2m_karras",
            Scheduler::DpmPp2m => "dpmpp_2m",
            Scheduler::UniPc => "unipc",
            Scheduler::Lcm => "lcm",
        }
    }

    /// `(Sampler, Schedule type)` as A1111 writes them in its infotext.
    pub fn a1111(self) -> (&'static str, Option<&'static str>) {
        match self {
            Scheduler::Ddim => ("DDIM", None),
            Scheduler::Euler => ("Euler", None),
            Scheduler::EulerAncestral => ("Euler a", None),
            Scheduler::DpmPp2mKarras => ("DPM++ 2M", Some("Karras")),
            Scheduler::DpmPp2m => ("DPM++ 2M", None),
            Scheduler::UniPc => ("UniPC", None),
            Scheduler::Lcm => ("LCM", None),
        }
    }

    /// Reads A1111's names back (older versions wrote "DPM++ 2M Karras" as one sampler name).
    pub fn from_a1111(sampler: &str, schedule: Option<&str>) -> Option<Scheduler> {
        let karras = schedule.is_some_and(|s| s.eq_ignore_ascii_case("karras"));
        Some(match sampler.trim() {
            "DDIM" => Scheduler::Ddim,
            "Euler" => Scheduler::Euler,
            "Euler a" => Scheduler::EulerAncestral,
            "DPM++ 2M Karras" => Scheduler::DpmPp2mKarras,
            "DPM++ 2M" if karras => Scheduler::DpmPp2mKarras,
            "DPM++ 2M" => Scheduler::DpmPp2m,
            "UniPC" => Scheduler::UniPc,
            "LCM" => Scheduler::Lcm,
            _ => return None,
        })
    }

    pub fn parse(id: &str) -> Result<Scheduler> {
        Scheduler::ALL
            .into_iter()
            .find(|s| s.id() == id)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown scheduler \"{id}\"; use one of: {}",
                    Scheduler::ALL.map(|s| s.id()).join(", ")
                ))
            })
    }
}

/// A source image for img2img: an asset of the gallery (or an imported file) and how much of
/// it to repaint (1.0 = all, 0.0 = none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitImage {
    pub asset_id: i64,
    pub strength: f64,
    /// Inpainting: a mask of the source's size (white: repaint, black: keep, grey: blend).
    /// Outside it the source's pixels are kept exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_asset_id: Option<i64>,
}

/// A variation of an image (A1111's "variation seed"): the starting noise is the image's own,
/// spherically blended towards another seed's by `strength` (0: the same image, 1: another).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Variation {
    pub seed: u64,
    pub strength: f64,
}

/// Everything that decides an image. Stored whole with each image, so "recall" restores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageParams {
    pub model: String,
    pub prompt: String,
    #[serde(default)]
    pub negative_prompt: String,
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    pub cfg_scale: f64,
    pub scheduler: Scheduler,
    /// `None`: a fresh random seed, recorded with the image.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Images made one after another; image `i` uses seed `seed + i`.
    #[serde(default = "one")]
    pub batch_count: u32,
    #[serde(default)]
    pub init_image: Option<InitImage>,
    /// Images near a seed's image. With a batch, the seed stays and the variation seed counts
    /// up, so every image is a neighbour of the same picture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variation: Option<Variation>,
    /// Translate a Chinese prompt with the local text model before CLIP. The translation is
    /// shown and editable, and what CLIP read is recorded.
    #[serde(default)]
    pub translated_prompt: Option<String>,
}

fn one() -> u32 {
    1
}

impl ImageParams {
    /// Checks everything a user can get wrong, with messages that say what to change.
    pub fn validate(&self) -> Result<()> {
        if self.model.trim().is_empty() {
            return Err(Error::invalid("choose an image model first"));
        }
        if self.prompt.trim().is_empty() {
            return Err(Error::invalid(
                "the prompt is empty: describe the image you want",
            ));
        }
        if self
            .translated_prompt
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            return Err(Error::invalid(
                "the English prompt is empty: translate again, write it, or use the original",
            ));
        }
        let translated = self.translated_prompt.clone().unwrap_or_default();
        for (what, text) in [
            ("prompt", &self.prompt),
            ("negative prompt", &self.negative_prompt),
            ("English prompt", &translated),
        ] {
            let n = text.chars().count();
            if n > MAX_PROMPT_CHARS {
                return Err(Error::invalid(format!(
                    "the {what} has {n} characters; the limit is {MAX_PROMPT_CHARS}"
                )));
            }
        }
        for (what, v) in [("width", self.width), ("height", self.height)] {
            if !(MIN_SIDE..=MAX_SIDE).contains(&v) || v % 8 != 0 {
                return Err(Error::invalid(format!(
                    "the {what} is {v} px; it must be a multiple of 8 between {MIN_SIDE} and {MAX_SIDE}"
                )));
            }
        }
        if !(1..=MAX_STEPS).contains(&self.steps) {
            return Err(Error::invalid(format!(
                "steps must be between 1 and {MAX_STEPS} (got {})",
                self.steps
            )));
        }
        if !self.cfg_scale.is_finite() || !(0.0..=30.0).contains(&self.cfg_scale) {
            return Err(Error::invalid(format!(
                "the CFG scale must be between 0 and 30 (got {})",
                self.cfg_scale
            )));
        }
        if self.seed.is_some_and(|s| s > MAX_SEED) {
            return Err(Error::invalid(format!(
                "the seed must be between 0 and {MAX_SEED}"
            )));
        }
        if !(1..=MAX_BATCH).contains(&self.batch_count) {
            return Err(Error::invalid(format!(
                "the batch count must be between 1 and {MAX_BATCH} (got {})",
                self.batch_count
            )));
        }
        if let Some(v) = &self.variation {
            if !v.strength.is_finite() || !(0.0..=1.0).contains(&v.strength) {
                return Err(Error::invalid(format!(
                    "the variation strength must be between 0 and 1 (got {})",
                    v.strength
                )));
            }
            if v.seed > MAX_SEED {
                return Err(Error::invalid(format!(
                    "the variation seed must be between 0 and {MAX_SEED}"
                )));
            }
        }
        if let Some(init) = &self.init_image
            && (!init.strength.is_finite() || !(0.0..=1.0).contains(&init.strength))
        {
            return Err(Error::invalid(format!(
                "the img2img strength must be between 0 and 1 (got {})",
                init.strength
            )));
        }
        Ok(())
    }

    /// Whether the negative branch runs: CFG at or below 1 is plain conditioning (turbo models).
    pub fn uses_cfg(&self) -> bool {
        cfg_applies(self.cfg_scale)
    }
}

/// Whether a guidance scale runs the UNet on the negative prompt too (a batch of two).
pub fn cfg_applies(cfg_scale: f64) -> bool {
    cfg_scale > 1.0
}

#[cfg(test)]
pub(crate) fn sample_params() -> ImageParams {
    ImageParams {
        model: "tiny".into(),
        prompt: "a red apple on a table".into(),
        negative_prompt: String::new(),
        width: 64,
        height: 64,
        steps: 4,
        cfg_scale: 7.0,
        scheduler: Scheduler::Euler,
        seed: Some(1),
        batch_count: 1,
        init_image: None,
        variation: None,
        translated_prompt: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_says_what_to_change() {
        let ok = sample_params();
        ok.validate().unwrap();
        let cases: Vec<(Box<dyn Fn(&mut ImageParams)>, &str)> = vec![
            (Box::new(|p| p.prompt = "  ".into()), "prompt is empty"),
            (Box::new(|p| p.width = 100), "multiple of 8"),
            (
                Box::new(|p| p.translated_prompt = Some("  ".into())),
                "English prompt is empty",
            ),
            (Box::new(|p| p.height = 4096), "between 64 and 2048"),
            (Box::new(|p| p.steps = 0), "steps"),
            (Box::new(|p| p.cfg_scale = f64::NAN), "CFG"),
            (Box::new(|p| p.seed = Some(1 << 40)), "seed"),
            (Box::new(|p| p.batch_count = 0), "batch"),
            (Box::new(|p| p.prompt = "字".repeat(5000)), "limit is 4000"),
            (
                Box::new(|p| {
                    p.init_image = Some(InitImage {
                        asset_id: 1,
                        strength: 1.5,
                        mask_asset_id: None,
                    })
                }),
                "strength",
            ),
        ];
        for (change, needle) in cases {
            let mut p = ok.clone();
            change(&mut p);
            let e = p.validate().unwrap_err().to_string();
            assert!(e.contains(needle), "{e} lacks {needle}");
        }
    }

    #[test]
    fn scheduler_names_round_trip_through_a1111() {
        for s in Scheduler::ALL {
            let (sampler, schedule) = s.a1111();
            assert_eq!(Scheduler::from_a1111(sampler, schedule), Some(s));
            assert_eq!(Scheduler::parse(s.id()).unwrap(), s);
        }
        assert_eq!(
            Scheduler::from_a1111("DPM++ 2M Karras", None),
            Some(Scheduler::DpmPp2mKarras)
        );
        assert!(Scheduler::parse("heun").is_err());
    }
}
