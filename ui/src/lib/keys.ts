// Chinese (and Japanese, Korean) input methods use Enter to confirm a candidate. That Enter
// must never submit a form: while composing, `isComposing` is true (and WebKit reports
// keyCode 229 for the confirming keydown).
export function isImeEnter(e: KeyboardEvent): boolean {
  return e.isComposing || e.keyCode === 229;
}

/** A keydown handler that calls `submit` on Enter, except while an IME is composing. */
export function onEnter(submit: () => void, onEscape?: () => void) {
  return (e: KeyboardEvent) => {
    if (e.key === 'Enter' && !e.shiftKey) {
      if (isImeEnter(e)) return;
      e.preventDefault();
      submit();
    } else if (e.key === 'Escape' && onEscape && !isImeEnter(e)) {
      e.preventDefault();
      onEscape();
    }
  };
}

/** Ctrl+Enter (⌘+Enter) in a multi-line field: submit; plain Enter stays a new line. */
export function onCtrlEnter(submit: () => void) {
  return (e: KeyboardEvent) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey) && !isImeEnter(e)) {
      e.preventDefault();
      submit();
    }
  };
}
