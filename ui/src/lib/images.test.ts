import { describe, expect, it } from 'vitest';
import { applyModelDefaults, cleanTranslation, emptyForm, needsTranslation, recallPng, recallRecord, sizeProblem, toRequest, translationRequest, variationsOf } from './images';
import type { ImageModelInfo, ImageRecord, Recalled } from './types';

const record: ImageRecord = {
  version: 1,
  params: {
    model: 'sd15', prompt: '茉莉花茶, (soft light:1.2)', negative_prompt: 'blurry', width: 512, height: 768,
    steps: 30, cfg_scale: 6.5, scheduler: 'euler_ancestral', seed: 1234, batch_count: 1,
    init_image: { asset_id: 9, strength: 0.45 }, translated_prompt: null,
  },
  model_family: 'SD 1.5', model_hash: 'abcdef0123', rng: 'chacha8-box-muller', app: 'Atelier',
};

function recalled(over: Partial<Recalled>): Recalled {
  return {
    source: 'a1111', prompt: '', negative_prompt: '', width: null, height: null, steps: null, cfg_scale: null,
    seed: null, scheduler: null, model: null, strength: null, variation: null, record: null, label: null, ...over,
  };
}

describe('image form', () => {
  it('sends a seed only when it is locked, and the source with its strength', () => {
    const f = emptyForm();
    f.params.prompt = '  a cat  ';
    f.params.seed = 42;
    expect(toRequest(f).seed).toBeNull();
    expect(toRequest(f).prompt).toBe('a cat');
    f.seedLocked = true;
    f.sourceAssetId = 3;
    f.strength = 0.3;
    const r = toRequest(f);
    expect(r.seed).toBe(42);
    expect(r.init_image).toEqual({ asset_id: 3, strength: 0.3 });
  });

  it('never asks ComfyUI for a variation, and recalls its models from dropped files', () => {
    const f = emptyForm();
    f.params.prompt = 'a cat';
    f.params.seed = 7;
    f.seedLocked = true;
    f.params.variation = { seed: 9, strength: 0.1 };
    f.params.model = 'sd15';
    expect(toRequest(f).variation).toEqual({ seed: 9, strength: 0.1 });
    f.params.model = 'comfyui:sd_xl_base_1.0.safetensors';
    expect(toRequest(f).variation).toBeNull();
    const r = recallPng(emptyForm(), recalled({ prompt: 'x', model: 'comfyui:a.safetensors' }), ['sd15', 'comfyui:a.safetensors']);
    expect(r.params.model).toBe('comfyui:a.safetensors');
  });

  it('recall all restores every setting, seed locked, source and strength included', () => {
    const f = recallRecord(emptyForm(), record);
    expect(f.params).toEqual({ ...record.params, variation: null, init_image: null });
    expect(f.seedLocked).toBe(true);
    expect(f.sourceAssetId).toBe(9);
    expect(f.strength).toBe(0.45);
    expect(toRequest(f)).toEqual({ ...record.params, variation: null });
  });

  it('a peer PNG fills what it has and keeps the rest; an unknown model is not chosen', () => {
    const start = emptyForm();
    start.params.model = 'mine';
    const f = recallPng(start, recalled({ prompt: 'a dog', negative_prompt: 'lowres', width: 640, height: 384, steps: 20, seed: 7, scheduler: 'euler', model: 'someone-elses' }), ['mine']);
    expect(f.params.prompt).toBe('a dog');
    expect(f.params.width).toBe(640);
    expect(f.params.steps).toBe(20);
    expect(f.params.cfg_scale).toBe(start.params.cfg_scale);
    expect(f.params.model).toBe('mine');
    expect(f.seedLocked).toBe(true);
    const own = recallPng(start, recalled({ source: 'atelier', record }), ['sd15']);
    expect(own.params.scheduler).toBe('euler_ancestral');
    expect(own.sourceAssetId).toBeNull();
  });

  it('sizes must be multiples of 8 within 64..2048', () => {
    expect(sizeProblem(512, 768)).toBeNull();
    expect(sizeProblem(500, 512)).toBe('multiple');
    expect(sizeProblem(4096, 512)).toBe('range');
    expect(sizeProblem(NaN, 512)).toBe('multiple');
  });

  it("a model's defaults set size, steps and CFG; SD-Turbo switches to Euler", () => {
    const turbo = { id: 't', family: 'sd-turbo', default_size: 512, recommended_steps: 1, recommended_cfg: 1 } as ImageModelInfo;
    const f = applyModelDefaults(emptyForm(), turbo);
    expect([f.params.model, f.params.width, f.params.steps, f.params.cfg_scale, f.params.scheduler]).toEqual(['t', 512, 1, 1, 'euler']);
    const xlTurbo = { ...turbo, id: 'x', family: 'sdxl-turbo' } as ImageModelInfo;
    expect(applyModelDefaults(emptyForm(), xlTurbo).params.scheduler).toBe('euler');
    const xl = { ...turbo, id: 'xl', family: 'sdxl', default_size: 1024, recommended_steps: 25, recommended_cfg: 5 } as ImageModelInfo;
    const g = applyModelDefaults(emptyForm(), xl);
    expect([g.params.width, g.params.steps, g.params.scheduler]).toEqual([1024, 25, emptyForm().params.scheduler]);
  });

  it('variations keep the seed and settings, add a batch and a variation seed; unlocked seeds send none', () => {
    const f = variationsOf(emptyForm(), record, 4, 777);
    const r = toRequest(f);
    expect([r.seed, r.batch_count, r.variation]).toEqual([1234, 4, { seed: 777, strength: 0.15 }]);
    expect(r.prompt).toBe(record.params.prompt);
    f.seedLocked = false;
    expect(toRequest(f).variation).toBeNull();
  });

  it('a mask travels with its source, and is dropped with it or when a PNG from elsewhere is read', () => {
    const f = emptyForm();
    f.sourceAssetId = 3;
    f.maskAssetId = 8;
    expect(toRequest(f).init_image).toEqual({ asset_id: 3, strength: 0.6, mask_asset_id: 8 });
    f.maskAssetId = null;
    expect(toRequest(f).init_image).toEqual({ asset_id: 3, strength: 0.6 });
    const withMask = { ...record, params: { ...record.params, init_image: { asset_id: 9, strength: 0.8, mask_asset_id: 10 } } };
    expect(recallRecord(emptyForm(), withMask).maskAssetId).toBe(10);
    expect(recallPng(emptyForm(), recalled({ source: 'atelier', record: withMask }), []).maskAssetId).toBeNull();
  });

  it('Chinese prompts are offered a translation, and the answer is cleaned into one prompt line', () => {
    expect(needsTranslation('一只红苹果, studio light')).toBe(true);
    expect(needsTranslation('a red apple')).toBe(false);
    const req = translationRequest('  一只红苹果  ', 'qwen');
    expect(req.messages[1]).toEqual({ role: 'user', content: '一只红苹果' });
    expect(req.params.seed).not.toBeNull();
    expect(cleanTranslation('\nEnglish: "a red apple, (studio light:1.2)"\nHope this helps')).toBe('a red apple, (studio light:1.2)');
    expect(cleanTranslation('翻译：a red apple')).toBe('a red apple');
  });
});
