// The image studio's form and what fills it: model defaults, "recall all" from a gallery
// record, settings read from a dropped PNG, and thumbnails as blob: URLs.
import { api } from './api';
import { COMFYUI_PREFIX } from './types';
import type { ImageModelInfo, ImageParams, ImageRecord, Recalled, Scheduler, TextRequest } from './types';

/** How far "Variations" moves from the image by default (A1111 users mostly pick 0.05–0.3). */
export const VARIATION_STRENGTH = 0.15;

/** The form: the request plus what the UI keeps around it. */
export interface ImageForm {
  params: ImageParams;
  /** Unlocked: each run draws a new seed (shown after it ran). */
  seedLocked: boolean;
  /** The source image of img2img, as an asset of the project. */
  sourceAssetId: number | null;
  /** Inpainting: a mask painted on the source (white: repaint). */
  maskAssetId: number | null;
  strength: number;
}

export const SIZE_PRESETS: [number, number][] = [
  [512, 512],
  [768, 768],
  [512, 768],
  [768, 512],
  [640, 384],
];

/** The engine's limits (checked there too; this only shows them early). */
export const MIN_SIDE = 64;
export const MAX_SIDE = 2048;
export const MAX_SEED = 4294967295;

export function emptyForm(): ImageForm {
  return {
    params: {
      model: '',
      prompt: '',
      negative_prompt: '',
      width: 512,
      height: 512,
      steps: 25,
      cfg_scale: 7,
      scheduler: 'dpmpp_2m_karras',
      seed: null,
      batch_count: 1,
      init_image: null,
      translated_prompt: null,
    },
    seedLocked: false,
    sourceAssetId: null,
    maskAssetId: null,
    strength: 0.6,
  };
}

/** A model's own defaults: its native size, steps and CFG (the turbo models: 1–4 steps, no CFG). */
export function applyModelDefaults(form: ImageForm, m: ImageModelInfo): ImageForm {
  const p = { ...form.params, model: m.id, width: m.default_size, height: m.default_size };
  p.steps = m.recommended_steps;
  p.cfg_scale = m.recommended_cfg;
  if (m.family === 'sd-turbo' || m.family === 'sdxl-turbo') p.scheduler = 'euler';
  return { ...form, params: p };
}

/** Why a size is refused, or null. */
export function sizeProblem(w: number, h: number): 'range' | 'multiple' | null {
  if (!Number.isInteger(w) || !Number.isInteger(h)) return 'multiple';
  if (w < MIN_SIDE || h < MIN_SIDE || w > MAX_SIDE || h > MAX_SIDE) return 'range';
  if (w % 8 !== 0 || h % 8 !== 0) return 'multiple';
  return null;
}

/** The request to send: the seed only when locked, the source image only when set. */
export function toRequest(form: ImageForm): ImageParams {
  return {
    ...form.params,
    prompt: form.params.prompt.trim(),
    translated_prompt: form.params.translated_prompt?.trim() || null,
    seed: form.seedLocked ? form.params.seed : null,
    // Variations are of one seed's image: without a locked seed there is nothing to vary.
    // ComfyUI has no variation seed; the checkbox is off for its models, and so is the request.
    variation: form.seedLocked && form.params.variation && !form.params.model.startsWith(COMFYUI_PREFIX) ? form.params.variation : null,
    init_image:
      form.sourceAssetId != null
        ? { asset_id: form.sourceAssetId, strength: form.strength, ...(form.maskAssetId != null ? { mask_asset_id: form.maskAssetId } : {}) }
        : null,
  };
}

/** "Recall all": every setting of a gallery image back in the form, seed locked. */
export function recallRecord(form: ImageForm, r: ImageRecord): ImageForm {
  const p = r.params;
  return {
    params: { ...p, variation: p.variation ?? null, batch_count: 1, init_image: null },
    seedLocked: p.seed != null,
    sourceAssetId: p.init_image?.asset_id ?? null,
    maskAssetId: p.init_image?.mask_asset_id ?? null,
    strength: p.init_image?.strength ?? form.strength,
  };
}

/** Settings read from a PNG (Atelier, A1111, ComfyUI, InvokeAI); what it lacks stays as is. */
export function recallPng(form: ImageForm, r: Recalled, models: string[]): ImageForm {
  if (r.record) {
    const f = recallRecord(form, r.record);
    // A source image belongs to the project it came from; a dropped file may not carry it.
    return { ...f, sourceAssetId: null, maskAssetId: null };
  }
  const p = { ...form.params };
  p.prompt = r.prompt;
  p.negative_prompt = r.negative_prompt;
  if (r.width && r.height) {
    p.width = r.width;
    p.height = r.height;
  }
  if (r.steps) p.steps = r.steps;
  if (r.cfg_scale != null) p.cfg_scale = r.cfg_scale;
  if (r.scheduler) p.scheduler = r.scheduler as Scheduler;
  if (r.model && models.includes(r.model)) p.model = r.model;
  p.seed = r.seed;
  p.variation = r.variation;
  return {
    ...form,
    params: p,
    seedLocked: r.seed != null,
    strength: r.strength ?? form.strength,
  };
}

export function randomSeed(): number {
  const a = new Uint32Array(1);
  crypto.getRandomValues(a);
  return a[0];
}

// Thumbnails and images as blob: URLs, kept for the session with a cap so a long scroll
// through a big gallery does not hold every file in memory.
const MAX_URLS = 800;
const urls = new Map<number, Promise<string>>();

export function assetUrl(assetId: number): Promise<string> {
  const hit = urls.get(assetId);
  if (hit) {
    urls.delete(assetId);
    urls.set(assetId, hit);
    return hit;
  }
  const p = api.imageFile(assetId).then((bytes) => URL.createObjectURL(new Blob([bytes as BlobPart], { type: 'image/png' })));
  p.catch(() => urls.delete(assetId));
  urls.set(assetId, p);
  while (urls.size > MAX_URLS) {
    const [oldest, url] = urls.entries().next().value as [number, Promise<string>];
    urls.delete(oldest);
    url.then((u) => URL.revokeObjectURL(u)).catch(() => {});
  }
  return p;
}

/** The form for "Variations" of a recalled image: same everything, a batch of `count` images
 *  whose starting noise leans towards new variation seeds. */
export function variationsOf(form: ImageForm, r: ImageRecord, count: number, seed: number): ImageForm {
  const f = recallRecord(form, r);
  f.params.batch_count = count;
  f.params.variation = { seed, strength: r.params.variation?.strength ?? VARIATION_STRENGTH };
  return f;
}

/** CLIP (SD 1.5/2.1) reads English; a prompt with Chinese characters is worth translating. */
export function needsTranslation(prompt: string): boolean {
  return /[\u3400-\u9fff\uf900-\ufaff]/.test(prompt);
}

/** The request that asks the local text model for an English image prompt. Low temperature
 *  and a fixed seed: the same prompt translates the same way. */
export function translationRequest(prompt: string, model: string): TextRequest {
  return {
    model,
    messages: [
      {
        role: 'system',
        content:
          'You translate image descriptions for Stable Diffusion. Reply with one line of comma-separated English keywords and short phrases, nothing else. Keep any (word:1.2) weights and brackets around the translated words.',
      },
      { role: 'user', content: prompt.trim() },
    ],
    params: { temperature: 0.2, top_p: 0.9, top_k: 40, min_p: 0.05, repeat_penalty: 1.1, repeat_last_n: 64, max_tokens: 160, stop: ['\n\n'], seed: 7 },
  };
}

/** The model's answer as a prompt: the first non-empty line, without labels or quotes. */
export function cleanTranslation(text: string): string {
  const line = text.split('\n').map((l) => l.trim()).find((l) => l.length > 0) ?? '';
  return line
    .replace(/^(english|prompt|translation|英文|翻译)\s*[:：]\s*/i, '')
    .replace(/^["“'`]+|["”'`]+$/g, '')
    .trim();
}
