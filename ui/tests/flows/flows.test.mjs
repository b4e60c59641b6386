// Browser flows of the UI in Debian's Chromium (playwright-core, never a downloaded browser),
// with the IPC mocked in the page (see mock-backend.ts). Run after `vite build --mode flows`.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { readFile, mkdir } from 'node:fs/promises';
import { extname, join, normalize } from 'node:path';
import { chromium } from 'playwright-core';

const dist = join(import.meta.dirname, '../../dist-flows');
const shots = join(import.meta.dirname, '../../../target/flows');
const types = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css', '.json': 'application/json' };
let server, browser, base;

before(async () => {
  server = createServer(async (req, res) => {
    const path = normalize(decodeURIComponent(new URL(req.url, 'http://x').pathname)).replace(/^\/+/, '');
    const file = join(dist, path === '' ? 'flows.html' : path);
    try {
      const body = await readFile(file);
      res.writeHead(200, { 'content-type': types[extname(file)] ?? 'application/octet-stream' });
      res.end(body);
    } catch {
      res.writeHead(404).end();
    }
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${server.address().port}/`;
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  await mkdir(shots, { recursive: true });
});

after(async () => {
  await browser?.close();
  server?.close();
});

async function page() {
  const p = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  const errors = [];
  p.on('pageerror', (e) => errors.push(e.message));
  await p.goto(base);
  await p.getByTestId('project-list').waitFor();
  return { p, errors };
}

test('create, rename, trash and restore a project', async () => {
  const { p, errors } = await page();
  await p.getByTestId('new-project-name').fill('双十一预热');
  await p.getByTestId('create-project').click();
  const card = p.locator('[data-testid=project-list] li', { hasText: '双十一预热' });
  await card.waitFor();
  assert.equal(await p.getByTestId('project-switcher').locator('option:checked').textContent(), '双十一预热');

  const id = await card.getAttribute('data-project-id');
  await card.getByRole('button', { name: '重命名' }).click();
  const edit = p.locator(`[data-project-id="${id}"] input`);
  await edit.fill('双十一正式场');
  await edit.press('Enter');
  await p.locator('[data-testid=project-list] li', { hasText: '双十一正式场' }).waitFor();

  await p.locator('[data-testid=project-list] li', { hasText: '双十一正式场' }).getByRole('button', { name: '删除' }).click();
  await p.getByRole('dialog').getByText('移入回收站？', { exact: false }).waitFor();
  await p.getByTestId('confirm').click();
  await p.locator('[data-testid=trash-list] li', { hasText: '双十一正式场' }).waitFor();
  assert.equal(await p.locator('[data-testid=project-list] li', { hasText: '双十一正式场' }).count(), 0);

  await p.locator('[data-testid=trash-list] li', { hasText: '双十一正式场' }).getByRole('button', { name: '恢复' }).click();
  await p.locator('[data-testid=project-list] li', { hasText: '双十一正式场' }).waitFor();
  await p.screenshot({ path: join(shots, 'projects.png') });
  assert.deepEqual(errors, []);
});

test('history: search a Chinese fragment, filter, open the full record, star it', async () => {
  const { p, errors } = await page();
  await p.locator('[data-view=history]').click();
  const results = p.getByTestId('history-results').locator('li');
  await results.first().waitFor();
  assert.equal(await results.count(), 3);

  await p.getByTestId('history-search').fill('口红');
  await p.waitForFunction(() => document.querySelectorAll('[data-testid=history-results] li').length === 1);
  assert.match(await results.first().textContent(), /显白又持久/);

  await p.getByTestId('history-search').fill('');
  await p.getByTestId('history-kind').selectOption('image');
  await p.waitForFunction(() => document.querySelectorAll('[data-testid=history-results] li').length === 1);
  await results.first().locator('button.body').click();
  const detail = p.getByTestId('generation-detail');
  await detail.getByText('max_tokens').waitFor();
  assert.match(await detail.textContent(), /sd15/);
  assert.match(await detail.textContent(), /42/);
  await detail.getByRole('button', { name: '☆ 收藏' }).click();
  await detail.getByRole('button', { name: '★ 取消收藏' }).waitFor();
  await p.screenshot({ path: join(shots, 'history-detail.png') });
  await detail.getByRole('button', { name: '关闭' }).click();
  assert.deepEqual(errors, []);
});

test('the interrupted job can be retried, and the language switches to English', async () => {
  const { p, errors } = await page();
  await p.getByRole('status').filter({ hasText: '已中断' }).waitFor();
  const panel = p.getByTestId('job-panel');
  await panel.getByText('已中断').waitFor();
  await panel.getByRole('button', { name: '重试' }).click();
  await panel.getByText('已完成').waitFor();

  await p.locator('[data-view=settings]').click();
  await p.getByTestId('settings-language').selectOption('en');
  await p.locator('[data-view=history]', { hasText: 'History' }).waitFor();
  assert.equal(await p.evaluate(() => document.documentElement.lang), 'en');
  await p.getByTestId('settings-theme').selectOption('dark');
  assert.equal(await p.evaluate(() => document.documentElement.dataset.theme), 'dark');
  await p.screenshot({ path: join(shots, 'settings-en-dark.png') });
  assert.deepEqual(errors, []);
});

test('AI labels: turning the explicit notice off asks first, and an edited notice is saved', async () => {
  const { p, errors } = await page();
  await p.locator('[data-view=settings]').click();
  const toggle = p.getByTestId('label-explicit');
  assert.equal(await toggle.isChecked(), true);
  await toggle.click();
  const dialog = p.getByRole('dialog');
  await dialog.getByText('关闭显式提示？').waitFor();
  assert.equal(await toggle.isChecked(), true, 'still on until confirmed');
  await dialog.getByRole('button', { name: '取消' }).click();
  assert.equal(await toggle.isChecked(), true);
  await toggle.click();
  await p.getByTestId('confirm').click();
  await p.waitForFunction(() => !document.querySelector('[data-testid=label-explicit]').checked);
  const notice = p.getByTestId('label-notice-zh');
  await notice.fill('本文由 AI 生成，请审核后发布');
  await notice.press('Tab');
  await p.getByText('已保存').first().waitFor();
  await p.screenshot({ path: join(shots, 'settings-labels.png'), fullPage: true });
  assert.deepEqual(errors, []);
});

test('images: settings read from a picked file, a size that cannot run, and the gallery star, search, trash and restore', async () => {
  const { p, errors } = await page();
  await p.locator('[data-view=images]').click();
  const tiles = p.getByTestId('gallery-grid').locator('.tile');
  await tiles.first().waitFor();
  assert.equal(await tiles.count(), 3);
  await p.waitForFunction(() => document.querySelectorAll('[data-testid=gallery-grid] .tile img[src^="blob:"]').length === 3);
  assert.equal(await p.getByTestId('image-model').inputValue(), 'sd15');

  // Settings read from a PNG (the picker beside the title; a drop goes the same way).
  const picker = p.getByTestId('image-read-file');
  await picker.setInputFiles({ name: 'from-a1111.png', mimeType: 'image/png',
    buffer: Buffer.concat([Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]), Buffer.from('tEXtparameters')]) });
  await p.getByText('已读取 A1111 / sd.cpp 的设置').waitFor();
  assert.equal(await p.getByTestId('image-prompt').inputValue(), 'a jade bracelet on silk, soft light');
  assert.equal(await p.getByTestId('image-seed').inputValue(), '424242');
  assert.equal(await p.getByTestId('image-width').inputValue(), '768');
  // Not an image by name, then not an image by content: both refused, the form kept.
  await picker.setInputFiles({ name: 'notes.txt', mimeType: 'text/plain', buffer: Buffer.from('Steps: 20') });
  await p.getByText('只能从 PNG、JPEG 和 WebP 文件读取生成设置。').waitFor();
  await picker.setInputFiles({ name: 'renamed.png', mimeType: 'image/png', buffer: Buffer.from('GIF89a') });
  await p.getByText('this file is not a PNG, JPEG or WebP image').waitFor();
  assert.equal(await p.getByTestId('image-seed').inputValue(), '424242');

  // A size the model cannot take: said why, and Generate stays off until it is fixed.
  await p.getByTestId('image-width').fill('500');
  await p.getByRole('alert').filter({ hasText: '8 的倍数' }).waitFor();
  assert.equal(await p.getByTestId('image-generate').isDisabled(), true);
  await p.getByTestId('image-width').fill('4096');
  await p.getByRole('alert').filter({ hasText: '64 到 2048' }).waitFor();
  await p.getByTestId('image-width').fill('512');
  await p.waitForFunction(() => !document.querySelector('[data-testid=image-generate]').disabled);

  // The chosen image's record; starred; found by a word of its prompt.
  await p.locator('.tile[data-generation="101"]').click();
  const record = p.getByTestId('image-record');
  await record.getByText('1001').waitFor();
  assert.match(await record.textContent(), /cc6cb27103[\s\S]*DPM\+\+ 2M Karras/);
  await p.getByRole('button', { name: '☆ 收藏' }).click();
  await p.locator('.tile[data-generation="101"] .star').waitFor();
  await p.getByPlaceholder('搜索提示词').fill('perfume');
  await p.waitForFunction(() => document.querySelectorAll('[data-testid=gallery-grid] .tile').length === 1);
  await p.getByPlaceholder('搜索提示词').fill('');
  await p.waitForFunction(() => document.querySelectorAll('[data-testid=gallery-grid] .tile').length === 3);

  // To the trash and back.
  await p.getByRole('button', { name: '移到回收站' }).click();
  await p.getByText('已移到回收站').waitFor();
  assert.equal(await tiles.count(), 2);
  await p.getByLabel('回收站').check();
  await p.waitForFunction(() => document.querySelectorAll('[data-testid=gallery-grid] .tile').length === 1);
  await p.locator('.tile[data-generation="101"]').click();
  await p.screenshot({ path: join(shots, 'images-trash.png') });
  await p.getByRole('button', { name: '恢复', exact: true }).click();
  await p.getByText('回收站是空的。').waitFor();
  await p.getByLabel('回收站').uncheck();
  await p.waitForFunction(() => document.querySelectorAll('[data-testid=gallery-grid] .tile').length === 3);
  assert.deepEqual(errors, []);
});
