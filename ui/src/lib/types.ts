// Shapes of what the Rust commands return (see src-tauri/src/commands and the engine's store).

export interface UiError {
  kind: string;
  message: string;
}

export interface AppStatus {
  version: string;
  data_dir: string | null;
  db_path: string | null;
  error: UiError | null;
  interrupted_jobs: number;
  migration_backup: string | null;
}

export interface Project {
  id: number;
  name: string;
  description: string;
  created_at: number;
  updated_at: number;
  trashed_at: number | null;
  generation_count: number;
  document_count: number;
}

export type GenerationKind = 'text' | 'image' | 'script';
export type GenerationStatus = 'running' | 'succeeded' | 'failed' | 'cancelled';

export interface GenerationSummary {
  id: number;
  project_id: number;
  project_name: string;
  kind: GenerationKind;
  model_id: string;
  status: GenerationStatus;
  prompt_preview: string;
  output_preview: string;
  rating: number;
  starred: boolean;
  created_at: number;
}

export interface Asset {
  id: number;
  path: string;
  mime: string;
  size_bytes: number;
  width: number | null;
  height: number | null;
  sha256: string;
}

export interface GenerationRecord {
  id: number;
  project_id: number;
  project_name: string;
  job_id: number | null;
  kind: GenerationKind;
  model_id: string;
  prompt: string;
  params: Record<string, unknown> | null;
  seed: number | null;
  status: GenerationStatus;
  error_kind: string | null;
  error_message: string | null;
  output_text: string | null;
  asset: Asset | null;
  prompt_tokens: number | null;
  output_tokens: number | null;
  started_at: number | null;
  finished_at: number | null;
  duration_ms: number | null;
  rating: number;
  starred: boolean;
  created_at: number;
}

export interface HistoryQuery {
  text: string;
  kind: GenerationKind | null;
  project_id: number | null;
  starred_only: boolean;
  before: number | null;
  limit: number;
}

export interface HistoryPage {
  items: GenerationSummary[];
  next_before: number | null;
}

export type JobStatus = 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled' | 'interrupted';

export interface JobRecord {
  id: number;
  kind: string;
  resource: string;
  project_id: number | null;
  status: JobStatus;
  progress_done: number;
  progress_total: number;
  result: unknown;
  error_kind: string | null;
  error_message: string | null;
  retry_of: number | null;
  created_at: number;
  started_at: number | null;
  finished_at: number | null;
}

export type JobEvent =
  | { type: 'Queued' }
  | { type: 'Started' }
  | { type: 'Progress'; done: number; total: number }
  | { type: 'Token'; text: string }
  /** Waiting in a remote server's queue (ComfyUI) of `queued` runs, this one included. */
  | { type: 'Waiting'; queued: number }
  | { type: 'Preview'; image: number; step: number; data_url: string }
  | { type: 'Finished'; result: unknown }
  | { type: 'Failed'; kind: string; message: string }
  | { type: 'Cancelled' };

export interface JobUpdate {
  job_id: number;
  kind: string;
  event: JobEvent;
}

export type Theme = 'light' | 'dark' | 'system';

export type DevicePreference = 'auto' | 'cpu' | 'cuda' | 'metal';

export interface Settings {
  language: 'zh-CN' | 'en';
  theme: Theme;
  heavy_job_slots: number;
  text_model: string | null;
  model_memory_mb: number;
  threads: number;
  device: DevicePreference;
  cache_repacked_models: boolean;
  remote_base_url: string;
  remote_model: string;
  remote_timeout_s: number;
  remote_extra_sampling: boolean;
  remote_api_key_set: boolean;
  /** A ComfyUI server for image runs; '' = none. Its checkpoints are the models `comfyui:<name>`. */
  comfyui_url: string;
  /** Whether a key for the ComfyUI server is stored (sent as a bearer token; never shown). */
  comfyui_api_key_set: boolean;
  /** Explicit AI-content notice (must keep 人工智能/AI and 生成/合成). */
  label_notice_zh: string;
  label_notice_en: string;
  label_position: 'start' | 'end';
  /** Off only after an acknowledgement, which the app logs locally. */
  label_explicit: boolean;
  /** Registered provider code for ContentProducer; '' = "Atelier". */
  label_producer: string;
}

/** A settings change; `remote_api_key` and `comfyui_api_key` are write-only ('' removes one);
 * turning `label_explicit` off needs `acknowledge_unlabelled: true`. */
export type SettingsPatch = Partial<Omit<Settings, 'remote_api_key_set' | 'comfyui_api_key_set'>> & {
  remote_api_key?: string;
  comfyui_api_key?: string;
  acknowledge_unlabelled?: boolean;
};

export interface ModelInfo {
  id: string;
  file: string;
  file_bytes: number;
  architecture: string;
  name: string | null;
  parameters: number;
  quantization: string;
  tensor_types: Record<string, number>;
  context_length: number | null;
  license: string | null;
  tokenizer: string | null;
  has_chat_template: boolean;
  unsupported: string | null;
  /** What runs it on the CPU: Atelier's native engine (the file's own precision) or candle. */
  cpu_engine: 'native' | 'candle';
  repacked_on_cpu: string[];
}

export type ModelEntry = ({ status: 'ok' } & ModelInfo) | { status: 'broken'; file: string; error: string };

export interface LoadReport {
  engine: 'native' | 'candle';
  engine_note: string | null;
  repacked: Record<string, number>;
  from_cache: boolean;
  device: string;
  device_note: string | null;
  load_ms: number;
  resident_bytes: number;
}

export interface ModelsOverview {
  models: ModelEntry[];
  resident: { id: string; report: LoadReport; context_length: number }[];
  default_model: string | null;
  models_dir: string;
  default_threads: number;
  gpu_backends: string[];
}

export interface SamplingParams {
  temperature: number;
  top_p: number;
  top_k: number;
  min_p: number;
  repeat_penalty: number;
  repeat_last_n: number;
  max_tokens: number;
  stop: string[];
  seed: number | null;
}

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

export interface TextRequest {
  model: string;
  messages: ChatMessage[];
  params: SamplingParams;
}

export type StopReason = 'end_of_text' | 'stop_string' | 'max_tokens' | 'context_full' | 'cancelled';

export interface TextResult {
  generation_id: number;
  text: string;
  seed: number;
  prompt_tokens: number;
  completion_tokens: number;
  stop_reason: StopReason;
  first_token_ms: number;
  load_ms: number;
  total_ms: number;
  prefill_tokens_per_s: number;
  decode_tokens_per_s: number;
}

/** Which compliance packs apply: the product's category, the platform, an AI host. */
export interface CheckOptions {
  category?: string | null;
  platform?: string | null;
  virtual_host?: boolean;
  trademarks?: string[];
}

export interface Finding {
  rule: string;
  pack: string;
  category: string;
  /** High, medium, low (the rule packs' H / M / L). */
  severity: 'H' | 'M' | 'L';
  verdict: 'violation' | 'needs_evidence';
  matched: string;
  /** Unicode scalar values. */
  start: number;
  end: number;
  /** UTF-16 units: JavaScript string offsets. */
  start_utf16: number;
  end_utf16: number;
  basis_zh: string;
  basis_en: string;
  reason_zh: string;
  reason_en: string;
  suggestions: string[];
  exception: string | null;
}

export interface PackInfo {
  id: string;
  name_zh: string;
  name_en: string;
  version: string;
  last_reviewed: string;
  rules: number;
}

export interface CheckReport {
  findings: Finding[];
  packs: PackInfo[];
  chars: number;
}

export interface FileProblem {
  file: string;
  message: string;
}

export interface PacksOverview {
  packs: PackInfo[];
  problems: FileProblem[];
  folder: string;
}

export interface TemplateInput {
  id: string;
  type: 'text' | 'textarea' | 'select' | 'number';
  label_zh: string;
  label_en: string;
  help_zh?: string;
  help_en?: string;
  required: boolean;
  max_chars: number | null;
  options: string[];
  min: number | null;
  max: number | null;
  default: string | null;
  sample: string | null;
}

export interface CopyTemplate {
  id: string;
  group: 'product' | 'platform' | 'ads' | 'live' | 'rewrite';
  name_zh: string;
  name_en: string;
  description_zh: string;
  description_en: string;
  framework: string;
  output_language: 'zh' | 'en' | 'input';
  tones: string[];
  limits: { chars: number | null; title_chars: number | null; hashtags: number | null };
  platform: string | null;
  compliance: string[];
  inputs: TemplateInput[];
  prompt: string;
  source: string;
}

export interface TemplatesOverview {
  templates: CopyTemplate[];
  problems: FileProblem[];
  folder: string;
}

export type ExportFormat = 'txt' | 'md' | 'docx';

/** One template's copy in 1–4 variants (each its own job, seed + i when a seed is given). */
export interface CopyRequest {
  project_id: number;
  template_id: string;
  values: Record<string, string>;
  tone?: string | null;
  /** Omitted: the project's saved brand voice is used. */
  brand?: BrandVoice | null;
  model: string;
  params?: Partial<SamplingParams>;
  variants: number;
}

export interface VariantEvent {
  /** 0-based. */
  variant: number;
  event: JobEvent;
}

/** A project's brand voice, put into every prompt of the project. */
export interface BrandVoice {
  tone_words: string[];
  must_mention: string[];
  banned: string[];
  examples: string[];
  /** Registered trademarks the brand owns: an absolute word inside one needs evidence only. */
  trademarks: string[];
}

/** One saved state of a document; versions are only ever appended. */
export interface DocumentVersion {
  id: number;
  document_id: number;
  number: number;
  body: string;
  source: 'save' | 'generation' | 'restore';
  generation_id: number | null;
  note: string;
  created_at: number;
}

export interface CopyDocument {
  id: number;
  project_id: number;
  kind: 'copy' | 'script';
  title: string;
  template_id: string | null;
  starred: boolean;
  created_at: number;
  updated_at: number;
  version_count: number;
}

export interface OpenedDocument {
  document: CopyDocument;
  /** Newest first; the first is the current text. */
  versions: DocumentVersion[];
}

/** A template's TOML; `user` when it is one of the user's own files (editable, deletable). */
export interface TemplateSource {
  id: string;
  text: string;
  user: boolean;
}

// ---- Live scripts (engine::script) ----

export interface SellingPoint { feature: string; advantage: string; benefit: string; proof: string }
export interface Certificate { name: string; number: string; issuer: string }
export interface Faq { question: string; answer: string }
export interface Product {
  name: string;
  category: string;
  selling_points: SellingPoint[];
  audience: string;
  scenarios: string[];
  daily_price: number | null;
  live_price: number | null;
  price_basis: string;
  mechanism: string[];
  stock: number | null;
  link_no: number | null;
  specs: string[];
  faq: Faq[];
  brand_facts: string[];
  certificates: Certificate[];
  forbidden_claims: string[];
}
export interface ProductSummary {
  id: number; project_id: number; name: string; category: string;
  live_price: number | null; link_no: number | null; updated_at: number;
}
export interface ProductRecord extends ProductSummary { product: Product }
export type Tempo = 'explain' | 'standard' | 'push';
export interface ShowSettings {
  platform: string;
  slot_min: number;
  host_name: string;
  host_style: string;
  catch_phrases: string[];
  virtual_host: boolean;
  tempo: Tempo;
  chars_per_min: number | null;
  language: 'zh' | 'en';
}
export type ProductRole = 'traffic' | 'welfare' | 'profit';
export interface ShowProduct { product_id: number | null; role: ProductRole | null; product: Product }
export type SegmentKind = 'hook' | 'pain' | 'selling' | 'proof' | 'offer' | 'close' | 'interact' | 'opening' | 'transition' | 'closing';
export interface UnknownNumber { text: string; start_utf16: number; end_utf16: number }
export interface ScriptLine { text: string; alts: string[]; est_secs: number; findings: Finding[]; unknown_numbers: UnknownNumber[] }
export interface Cue { role: 'console' | 'floor' | 'assistant' | 'studio'; action: string; at_secs: number; label: string; [k: string]: unknown }
export interface Segment {
  kind: SegmentKind;
  product: number | null;
  start_secs: number;
  target_secs: number;
  est_secs: number;
  host: ScriptLine[];
  assistant: ScriptLine[];
  screen: string[];
  cues: Cue[];
  status: 'written' | 'placeholder';
  note: string;
  locked: boolean;
}
export interface Script {
  schema_version: number;
  kind: 'product' | 'show';
  title: string;
  show: ShowSettings;
  products: ShowProduct[];
  segments: Segment[];
  model: string;
  seed: number;
}
export interface ScriptView { document: CopyDocument; version_id: number; version_number: number; script: Script }
export interface ScriptRequest {
  project_id: number;
  kind: 'product' | 'show';
  title: string;
  products: ShowProduct[];
  show: ShowSettings;
  model: string;
  seed: number | null;
  document_id: number | null;
}
export interface SegmentRequest { document_id: number; version_id: number | null; segment: number; line: number | null; model: string; seed: number | null }
export interface RowError { row: number; column: string | null; message: string }
export interface ImportReport { imported: number; errors: RowError[]; encoding: string; ignored_columns: string[] }
export type ScriptFormat = 'md' | 'txt' | 'srt' | 'json' | 'csv';
export interface BatchEvent { product_id: number; event: JobEvent }

// ---- Image studio ----

export type Scheduler = 'dpmpp_2m_karras' | 'dpmpp_2m' | 'unipc' | 'euler' | 'euler_ancestral' | 'ddim' | 'lcm';
export const SCHEDULERS: Scheduler[] = ['dpmpp_2m_karras', 'dpmpp_2m', 'unipc', 'euler', 'euler_ancestral', 'ddim', 'lcm'];

export interface InitImage { asset_id: number; strength: number; mask_asset_id?: number | null }

export interface ImageParams {
  model: string;
  prompt: string;
  negative_prompt: string;
  width: number;
  height: number;
  steps: number;
  cfg_scale: number;
  scheduler: Scheduler;
  seed: number | null;
  batch_count: number;
  init_image: InitImage | null;
  /** Images near the seed's image (A1111's variation seed). */
  variation?: Variation | null;
  translated_prompt: string | null;
}

export interface Variation { seed: number; strength: number }

export interface ImagePiece { role: string; file: string; bytes: number; parameters: number; dtype: string }

export interface ImageModelInfo {
  id: string;
  path: string;
  family: 'sd15' | 'sd21' | 'sd-turbo' | 'sdxl' | 'sdxl-turbo' | 'custom';
  prediction: 'epsilon' | 'v_prediction';
  unet_in_channels: number;
  default_size: number;
  pieces: ImagePiece[];
  size_bytes: number;
  recommended_steps: number;
  recommended_cfg: number;
  /** Set when the model was imported from a single-file checkpoint. */
  converted_from: { file: string; sha256: string } | null;
  /** The memory check's estimate for one image at the default size and CFG on the CPU. */
  cpu_memory_bytes: number;
}

/** What the configured ComfyUI server offers (asked each time). */
export interface ComfyServerInfo {
  base_url: string;
  version: string | null;
  devices: string[];
  checkpoints: string[];
}

/** Image model ids naming a checkpoint on the ComfyUI server. */
export const COMFYUI_PREFIX = 'comfyui:';

export type ImageModelEntry =
  | ({ status: 'ok' } & ImageModelInfo)
  | { status: 'broken'; id: string; error: string };

export interface GalleryImage {
  generation_id: number;
  project_id: number;
  asset_id: number;
  thumb_asset_id: number | null;
  board_id: number | null;
  width: number;
  height: number;
  prompt: string;
  model_id: string;
  seed: number | null;
  starred: boolean;
  rating: number;
  /** Sorted. */
  tags: string[];
  trashed: boolean;
  created_at: number;
}

export interface TagCount { tag: string; image_count: number }

export interface GalleryQuery {
  project_id: number;
  text?: string;
  starred_only?: boolean;
  rated_up_only?: boolean;
  tag?: string | null;
  /** 0: images on no board. */
  board_id?: number | null;
  trash?: boolean;
  before?: number | null;
  limit?: number;
}

export interface GalleryPage { items: GalleryImage[]; next_before: number | null }

export interface Board { id: number; project_id: number; name: string; image_count: number; created_at: number }

export interface ImageRecord {
  version: number;
  params: ImageParams;
  model_family: string;
  model_hash: string;
  rng: string;
  app: string;
}

export interface ImplicitLabel {
  Label: string;
  ContentProducer: string;
  ProduceID: string;
  ContentPropagator: string;
  PropagateID: string;
}

/** Settings read from a PNG (Atelier's own record when present). */
export interface Recalled {
  source: string;
  prompt: string;
  negative_prompt: string;
  width: number | null;
  height: number | null;
  steps: number | null;
  cfg_scale: number | null;
  seed: number | null;
  scheduler: Scheduler | null;
  model: string | null;
  strength: number | null;
  variation: Variation | null;
  record: ImageRecord | null;
  label: ImplicitLabel | null;
}

export type Corner = 'top_left' | 'top_right' | 'bottom_left' | 'bottom_right';
export type ImageFileType = 'png' | 'jpeg' | 'webp';

export interface ImageExport {
  path: string;
  visible_label: { x: number; y: number; width: number; height: number; text_height: number } | null;
}
