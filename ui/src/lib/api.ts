// Typed wrappers over the Rust commands. Every failure becomes an ApiError with the
// `{kind, message}` the backend sent (or `ipc` for a transport/permission failure).
import { invoke, Channel } from '@tauri-apps/api/core';
import type { ComfyServerInfo,
  BrandVoice,
  CheckOptions,
  DocumentVersion,
  CopyDocument,
  OpenedDocument,
  TemplateSource,
  CopyTemplate,
  CheckReport,
  CopyRequest,
  VariantEvent,
  ExportFormat,
  PacksOverview,
  TemplatesOverview,
  AppStatus,
  GenerationRecord,
  HistoryPage,
  HistoryQuery,
  JobEvent,
  JobRecord,
  JobUpdate,
  Project,
  ModelInfo,
  ModelsOverview,
  Settings,
  SettingsPatch,
  TextRequest,
  BatchEvent,
  ImportReport,
  Product,
  ProductRecord,
  ProductSummary,
  Script,
  ScriptFormat,
  ScriptRequest,
  ScriptView,
  SegmentRequest,
  ShowSettings,
  Asset,
  Board,
  Corner,
  GalleryImage,
  GalleryPage,
  GalleryQuery,
  ImageExport,
  ImageFileType,
  ImageModelEntry,
  ImageModelInfo,
  ImageParams,
  ImageRecord,
  Recalled,
  TagCount,
} from './types';

export class ApiError extends Error {
  constructor(
    public kind: string,
    message: string,
  ) {
    super(message);
  }
}

export function toApiError(e: unknown): ApiError {
  if (e instanceof ApiError) return e;
  if (e && typeof e === 'object' && 'kind' in e && 'message' in e) {
    const o = e as { kind: unknown; message: unknown };
    return new ApiError(String(o.kind), String(o.message));
  }
  return new ApiError('ipc', typeof e === 'string' ? e : String(e));
}

async function call<T>(cmd: string, args?: Record<string, unknown>): Promise<T> {
  try {
    return await invoke<T>(cmd, args);
  } catch (e) {
    throw toApiError(e);
  }
}

export const api = {
  appStatus: () => call<AppStatus>('app_status'),
  retryOpen: () => call<AppStatus>('retry_open'),
  startNewDatabase: () => call<string>('start_new_database'),

  listProjects: () => call<Project[]>('list_projects'),
  listTrash: () => call<Project[]>('list_trash'),
  createProject: (name: string) => call<Project>('create_project', { name }),
  renameProject: (id: number, name: string) => call<Project>('rename_project', { id, name }),
  trashProject: (id: number) => call<Project>('trash_project', { id }),
  restoreProject: (id: number) => call<Project>('restore_project', { id }),
  purgeProject: (id: number) => call<number>('purge_project', { id }),

  searchHistory: (query: HistoryQuery) => call<HistoryPage>('search_history', { query }),
  getGeneration: (id: number) => call<GenerationRecord>('get_generation', { id }),
  starGeneration: (id: number, starred: boolean) => call<void>('star_generation', { id, starred }),
  rateGeneration: (id: number, rating: number) => call<void>('rate_generation', { id, rating }),

  listJobs: () => call<JobRecord[]>('list_jobs'),
  cancelJob: (id: number) => call<boolean>('cancel_job', { id }),
  retryJob: (id: number, onEvent: (e: JobEvent) => void) => {
    const ch = new Channel<JobEvent>();
    ch.onmessage = onEvent;
    return call<number>('retry_job', { id, onEvent: ch });
  },
  watchJobs: (onUpdate: (u: JobUpdate) => void) => {
    const ch = new Channel<JobUpdate>();
    ch.onmessage = onUpdate;
    return call<void>('watch_jobs', { onUpdate: ch });
  },
  startMaintenance: (onEvent: (e: JobEvent) => void) => {
    const ch = new Channel<JobEvent>();
    ch.onmessage = onEvent;
    return call<number>('start_maintenance', { onEvent: ch });
  },

  getSettings: () => call<Settings>('get_settings'),
  updateSettings: (patch: SettingsPatch) => call<Settings>('update_settings', { patch }),

  listModels: () => call<ModelsOverview>('list_models'),
  importModel: (path: string) => call<ModelInfo>('import_model', { path }),
  removeModel: (id: string) => call<void>('remove_model', { id }),
  unloadModel: (id: string) => call<void>('unload_model', { id }),
  generateText: (projectId: number, request: TextRequest, onEvent: (e: JobEvent) => void) => {
    const ch = new Channel<JobEvent>();
    ch.onmessage = onEvent;
    return call<number>('generate_text', { projectId, request, onEvent: ch });
  },

  checkText: (text: string, options: CheckOptions = {}) => call<CheckReport>('check_text', { text, options }),
  compliancePacks: () => call<PacksOverview>('compliance_packs'),
  listTemplates: () => call<TemplatesOverview>('list_templates'),
  exportText: (body: string, title: string, format: ExportFormat) => call<string>('export_text', { body, title, format }),
  saveCopyVersion: (a: { projectId: number; documentId: number | null; title: string; templateId: string | null; body: string; generationId: number | null }) =>
    call<DocumentVersion>('save_copy_version', a),
  listVersions: (documentId: number) => call<DocumentVersion[]>('list_versions', { documentId }),
  restoreVersion: (versionId: number) => call<DocumentVersion>('restore_version', { versionId }),
  listCopyDocuments: (projectId: number) => call<CopyDocument[]>('list_copy_documents', { projectId }),
  openDocument: (documentId: number) => call<OpenedDocument>('open_document', { documentId }),
  starDocument: (documentId: number, starred: boolean) => call<CopyDocument>('star_document', { documentId, starred }),
  renameDocument: (documentId: number, title: string) => call<CopyDocument>('rename_document', { documentId, title }),
  clipboardText: (body: string) => call<string>('clipboard_text', { body }),
  templateSource: (id: string) => call<TemplateSource>('template_source', { id }),
  duplicateTemplate: (id: string) => call<TemplateSource>('duplicate_template', { id }),
  saveTemplate: (text: string, previousId: string | null) => call<CopyTemplate>('save_template', { text, previousId }),
  deleteTemplate: (id: string) => call<null>('delete_template', { id }),
  previewTemplate: (text: string) => call<string>('preview_template', { text }),
  getBrandVoice: (projectId: number) => call<BrandVoice>('get_brand_voice', { projectId }),
  setBrandVoice: (projectId: number, voice: BrandVoice) => call<BrandVoice>('set_brand_voice', { projectId, voice }),
  generateCopy: (request: CopyRequest, onEvent: (e: VariantEvent) => void) => {
    const ch = new Channel<VariantEvent>();
    ch.onmessage = onEvent;
    return call<number[]>('generate_copy', { request, onEvent: ch });
  },

  listProducts: (projectId: number, query = '') => call<ProductSummary[]>('list_products', { projectId, query }),
  getProduct: (id: number) => call<ProductRecord>('get_product', { id }),
  saveProduct: (projectId: number, id: number | null, product: Product) => call<ProductRecord>('save_product', { projectId, id, product }),
  deleteProduct: (id: number) => call<null>('delete_product', { id }),
  /** The file's bytes go as the raw request body (GB18030 files must reach Rust undecoded). */
  importProductsCsv: async (projectId: number, bytes: Uint8Array) => {
    try {
      return await invoke<ImportReport>('import_products_csv', bytes, { headers: { 'project-id': String(projectId) } });
    } catch (e) {
      throw toApiError(e);
    }
  },
  generateScript: (request: ScriptRequest, onEvent: (e: JobEvent) => void) => {
    const ch = new Channel<JobEvent>();
    ch.onmessage = onEvent;
    return call<number>('generate_script', { request, onEvent: ch });
  },
  createBlankScript: (request: ScriptRequest) => call<ScriptView>('create_blank_script', { request }),
  regenerateSegment: (request: SegmentRequest, onEvent: (e: JobEvent) => void) => {
    const ch = new Channel<JobEvent>();
    ch.onmessage = onEvent;
    return call<number>('regenerate_segment', { request, onEvent: ch });
  },
  generateScriptsBatch: (a: { projectId: number; productIds: number[]; show: ShowSettings; model: string; seed: number | null }, onEvent: (e: BatchEvent) => void) => {
    const ch = new Channel<BatchEvent>();
    ch.onmessage = onEvent;
    return call<number[]>('generate_scripts_batch', { ...a, onEvent: ch });
  },
  listScripts: (projectId: number) => call<CopyDocument[]>('list_scripts', { projectId }),
  getScript: (documentId: number, versionId: number | null = null) => call<ScriptView>('get_script', { documentId, versionId }),
  saveScript: (documentId: number, script: Script, note = '') => call<ScriptView>('save_script', { documentId, script, note }),
  exportScript: (documentId: number, versionId: number | null, format: ScriptFormat) => call<string>('export_script', { documentId, versionId, format }),
  openTeleprompter: (documentId: number) => call<null>('open_teleprompter', { documentId }),
  teleprompterScript: () => call<ScriptView>('teleprompter_script'),
  setFullscreen: (on: boolean) => call<null>('set_fullscreen', { on }),

  listImageModels: () => call<ImageModelEntry[]>('list_image_models'),
  importImageModel: (path: string) => call<ImageModelInfo>('import_image_model', { path }),
  comfyuiServer: () => call<ComfyServerInfo>('comfyui_server'),
  generateImage: (projectId: number, params: ImageParams, onEvent: (e: JobEvent) => void) => {
    const ch = new Channel<JobEvent>();
    ch.onmessage = onEvent;
    return call<number>('generate_image', { projectId, params, onEvent: ch });
  },
  gallery: (query: GalleryQuery) => call<GalleryPage>('gallery', { query }),
  /** A gallery file's bytes (PNG), for a blob: URL. */
  imageFile: async (assetId: number) => new Uint8Array(await call<ArrayBuffer>('image_file', { assetId })),
  imageRecord: (generationId: number) => call<ImageRecord>('image_record', { generationId }),
  /** The PNG's bytes go as the raw request body. */
  readImageSettings: async (bytes: Uint8Array) => {
    try {
      return await invoke<Recalled>('read_image_settings', bytes);
    } catch (e) {
      throw toApiError(e);
    }
  },
  addSourceImage: async (projectId: number, bytes: Uint8Array) => {
    try {
      return await invoke<Asset>('add_source_image', bytes, { headers: { 'project-id': String(projectId) } });
    } catch (e) {
      throw toApiError(e);
    }
  },
  trashImages: (ids: number[], trashed: boolean) => call<number>('trash_images', { ids, trashed }),
  listBoards: (projectId: number) => call<Board[]>('list_boards', { projectId }),
  createBoard: (projectId: number, name: string) => call<Board>('create_board', { projectId, name }),
  setImageBoard: (generationId: number, boardId: number | null) => call<void>('set_image_board', { generationId, boardId }),
  setImageTags: (generationId: number, tags: string[]) => call<GalleryImage>('set_image_tags', { generationId, tags }),
  listImageTags: (projectId: number) => call<TagCount[]>('list_image_tags', { projectId }),
  exportImage: (generationId: number, labelText: string | null, corner: Corner, format: ImageFileType = 'png') =>
    call<ImageExport>('export_image', { generationId, labelText, corner, format }),
};
