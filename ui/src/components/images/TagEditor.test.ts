import { afterEach, describe, expect, it } from 'vitest';
import { cleanup, fireEvent, render, screen } from '@testing-library/svelte';
import TagEditor from './TagEditor.svelte';

afterEach(cleanup);

function setup(tags: string[]) {
  const changes: string[][] = [];
  render(TagEditor, { props: { tags, known: ['主图', '封面'], onchange: (t: string[]) => changes.push(t) } });
  const input = screen.getByTestId('image-tag-input') as HTMLInputElement;
  return { changes, input };
}

describe('TagEditor', () => {
  it('adds what was typed on Enter, split on Chinese and ASCII commas, without duplicates', async () => {
    const { changes, input } = setup(['主图']);
    await fireEvent.input(input, { target: { value: '双十一，主图, 首页  大图、双十一' } });
    await fireEvent.keyDown(input, { key: 'Enter' });
    expect(changes).toEqual([['主图', '双十一', '首页 大图']]);
    expect(input.value).toBe('');
  });

  it('ignores Enter while an input method is composing', async () => {
    const { changes, input } = setup([]);
    await fireEvent.input(input, { target: { value: 'zhu tu' } });
    await fireEvent.keyDown(input, { key: 'Enter', isComposing: true });
    await fireEvent.keyDown(input, { key: 'Enter', keyCode: 229 });
    expect(changes).toEqual([]);
    expect(input.value).toBe('zhu tu');
  });

  it('removes a tag with its × and the last one with Backspace on an empty field', async () => {
    const { changes, input } = setup(['主图', '封面']);
    await fireEvent.click(screen.getByLabelText('移除标签 主图'));
    await fireEvent.keyDown(input, { key: 'Backspace' });
    expect(changes).toEqual([['封面'], []]);
  });

  it('keeps both of two tags added before the first is saved', async () => {
    const { changes, input } = setup([]);
    await fireEvent.input(input, { target: { value: '主图' } });
    await fireEvent.keyDown(input, { key: '，' });
    await fireEvent.input(input, { target: { value: '双十一' } });
    await fireEvent.keyDown(input, { key: 'Enter' });
    expect(changes).toEqual([['主图'], ['主图', '双十一']]);
  });

  it('offers the project tags the image does not have yet', () => {
    setup(['主图']);
    const options = [...document.querySelectorAll('datalist option')].map((o) => (o as HTMLOptionElement).value);
    expect(options).toEqual(['封面']);
  });
});
