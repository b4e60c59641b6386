import { describe, expect, it, vi } from 'vitest';
import { onCtrlEnter, onEnter } from './keys';

function key(init: KeyboardEventInit & { keyCode?: number }) {
  const e = new KeyboardEvent('keydown', { ...init, cancelable: true });
  if (init.keyCode !== undefined) Object.defineProperty(e, 'keyCode', { value: init.keyCode });
  return e;
}

describe('onEnter', () => {
  it('submits on a plain Enter', () => {
    const submit = vi.fn();
    onEnter(submit)(key({ key: 'Enter' }));
    expect(submit).toHaveBeenCalledOnce();
  });

  it('does not submit while an IME is composing (pinyin candidate confirmation)', () => {
    const submit = vi.fn();
    onEnter(submit)(key({ key: 'Enter', isComposing: true }));
    onEnter(submit)(key({ key: 'Enter', keyCode: 229 }));
    expect(submit).not.toHaveBeenCalled();
  });

  it('leaves Shift+Enter alone and maps Escape to cancel', () => {
    const submit = vi.fn();
    const cancel = vi.fn();
    onEnter(submit, cancel)(key({ key: 'Enter', shiftKey: true }));
    onEnter(submit, cancel)(key({ key: 'Escape' }));
    expect(submit).not.toHaveBeenCalled();
    expect(cancel).toHaveBeenCalledOnce();
  });
});

describe('onCtrlEnter', () => {
  it('submits on Ctrl+Enter only, never while composing', () => {
    const submit = vi.fn();
    onCtrlEnter(submit)(key({ key: 'Enter' }));
    onCtrlEnter(submit)(key({ key: 'Enter', ctrlKey: true, isComposing: true }));
    expect(submit).not.toHaveBeenCalled();
    onCtrlEnter(submit)(key({ key: 'Enter', ctrlKey: true }));
    onCtrlEnter(submit)(key({ key: 'Enter', metaKey: true }));
    expect(submit).toHaveBeenCalledTimes(2);
  });
});
