"""Look and texts of the app: CSS, the keyboard shortcuts of the Annotate tab and the guidelines."""

from __future__ import annotations

GENERATE_CSS = """
#idglow-banner {border-left: 4px solid #f59e0b; padding: 0.15rem 0.6rem; background: rgba(245,158,11,0.08);}
#idglow-banner p {margin: 0;}
#gen-cards {gap: 8px;}
#gen-cards .gen-card {flex: 1 1 150px; max-width: calc(33.3% - 6px); gap: 4px; padding: 4px;
  border: 1px solid var(--border-color-primary); border-radius: 8px;}
#gen-cards .gen-card-crop img {object-fit: cover; border-radius: 6px;}
#gen-cards .gen-card-advanced {padding: 0;}
#gen-cards .gen-card-field span[data-testid="block-info"] {display: block !important; position: static !important;
  width: auto !important; height: auto !important; clip: auto !important; overflow: visible !important;
  white-space: nowrap; margin: 0 0 1px; font-size: 13px; line-height: 1.2; color: var(--body-text-color);}
#gen-cards .gen-card-row {gap: 4px; flex-wrap: nowrap;}
#gen-inputs {gap: 8px;}
#gen-consent-row {align-items: center;}
#gen-task .wrap {flex-wrap: nowrap;}
#gen-task label {white-space: nowrap;}
#gen-photo-status p {margin: 0;}
#gen-scores table {table-layout: fixed; width: 100%;}
#gen-scores td, #gen-scores th {white-space: normal; word-break: break-word;}
@media (max-width: 640px) {
  #idglow-banner {font-size: 11.5px; line-height: 1.3; padding-top: 0.1rem; padding-bottom: 0.1rem;}
  #gen-cards .gen-card {max-width: calc(50% - 4px);}
  #gen-cards .gen-card-row {flex-wrap: wrap;}
  #gen-consent-row {flex-direction: column; align-items: stretch;}
}
"""

# The Annotate tab: a compact first screen (title and banner shrink to one line each while the tab is selected,
# then the candidates and the overall vote), square reference thumbnails that show the whole face, a small legend.
ANNOTATE_CSS = """
body:has(#annotate-tab-button.selected) #idglow-title h1 {font-size: 1.3rem !important; margin: 0 !important;}
body:has(#annotate-tab-button.selected) #idglow-banner {padding-top: 0.1rem; padding-bottom: 0.1rem;}
body:has(#annotate-tab-button.selected) #idglow-banner p {white-space: nowrap; overflow: hidden;
  text-overflow: ellipsis; margin: 0; font-size: 0.85rem;}
#annotate-content {gap: 8px;}
#signin-bar {align-items: center; min-height: 0;}
#annotate-head {align-items: baseline; gap: 0.5rem; flex-wrap: nowrap;}
#annotate-head .annotate-prompt-text {font-size: 0.9em; min-width: 0;}
#annotate-head .annotate-prompt-text summary {display: block; cursor: pointer; white-space: nowrap; overflow: hidden;
  text-overflow: ellipsis;}
#annotate-head .annotate-prompt-text[open] summary {white-space: pre-wrap; overflow-wrap: anywhere;}
#annotate-prompt {flex: 1 1 0% !important; min-width: 0 !important;}
#annotate-progress {font-size: 0.85em; text-align: right; white-space: nowrap; flex: 0 0 auto !important;
  width: max-content !important; min-width: 0 !important;}
#flag-title p {margin: 0; padding: 4px 8px; font-size: 0.9em;}
#annotate-left img, #annotate-right img {object-fit: contain;}
#annotate-refs .grid-container {grid-template-columns: repeat(var(--grid-cols), minmax(0, 1fr)) !important;
  grid-auto-rows: auto !important;}
#annotate-refs .thumbnail-item {display: flex; flex-direction: column; width: 100%; min-width: 0; height: auto;
  aspect-ratio: auto;}
#annotate-refs .thumbnail-item img {width: 100%; height: auto; aspect-ratio: 1 / 1; object-fit: contain;}
#annotate-refs .caption-label {position: static; max-width: 100%; white-space: normal; overflow-wrap: anywhere;
  text-align: center; background: none; border: none; padding: 2px 0; font-size: 0.8em;}
#annotate-pair:focus {outline: none;}
#shortcut-hint {min-height: 1.2em; font-weight: 600;}
#annotate-content .idglow-shortcuts {font-size: 0.8em; opacity: 0.85;}
.idglow-shortcuts kbd {border: 1px solid #999; border-radius: 3px; padding: 0 4px; font-size: 0.85em;}
@media (max-width: 640px) {
  #annotate-left, #annotate-right {height: min(56vh, 100vw) !important;}
  #annotate-refs, #annotate-refs .grid-wrap {height: auto !important;}
  #annotate-refs .grid-container {grid-template-columns: repeat(3, minmax(0, 1fr)) !important;}
  #annotate-head {flex-direction: column; align-items: stretch;}
  #annotate-head .annotate-prompt-text summary {white-space: pre-wrap; overflow-wrap: anywhere;}
  #annotate-progress {text-align: left;}
}
"""

# Lines that say what happened or what to do first, where the mistake is (never Gradio's error badge).
NOTICE_CSS = """
.idglow-problem {margin: 4px 0; padding: 4px 8px; border-left: 4px solid #b91c1c; background: #fef2f2;
  color: #7f1d1d; font-weight: 600;}
pre {white-space: pre-wrap !important; overflow-wrap: anywhere; overflow: visible !important;}
pre .token {color: inherit !important;}

/* WCAG AA contrast (4.5:1) for white text on the primary and the stop buttons, and for grey helper text */
:root, .gradio-container {
  --button-primary-background-fill: #c2410c !important; --button-primary-background-fill-hover: #9a3412 !important;
  --button-primary-text-color: #ffffff !important;
  --button-cancel-background-fill: #b91c1c !important; --button-cancel-background-fill-hover: #991b1b !important;
  --button-cancel-text-color: #ffffff !important;
}
.or, .show-api, footer a, footer button {color: #374151 !important;}
#answer-summary {font-size: 0.85em; flex: 0 1 auto !important; width: auto !important; min-width: 0 !important;
  white-space: nowrap; overflow: hidden; text-overflow: ellipsis;}
#annotate-notice {flex: 0 1 auto !important; width: auto !important; min-width: 0 !important;}
#annotate-notice p {margin: 0; padding: 2px 8px; font-size: 0.9em;}
.idglow-done {margin: 4px 0; padding: 4px 8px; border-left: 4px solid #15803d; color: inherit; font-weight: 600;}
"""

# On a phone: A and B side by side under the references, the head (what happened, the answers) pinned at the top
# and the vote pinned at the bottom, every button and choice at least 44 px high, the banner wrapped, not cut.
PHONE_CSS = """
@media (max-width: 640px) {
  #annotate-pair {flex-wrap: wrap !important; gap: 6px !important;}
  #annotate-refs {flex: 1 1 100% !important; min-width: 100% !important;}
  #annotate-left, #annotate-right {flex: 1 1 40% !important; min-width: 0 !important;
    height: min(34vh, 48vw) !important;}
  #annotate-votes {position: fixed !important; left: 0; right: 0; bottom: 0; z-index: 50; margin: 0 !important;
    padding: 4px 6px; gap: 4px !important; background: var(--background-fill-primary);
    box-shadow: 0 -2px 6px rgba(0, 0, 0, 0.2);}
  #annotate-votes > * {min-width: 0 !important;}
  #annotate-content {padding-bottom: 340px;}
  #annotate-notice p {position: fixed; top: 0; left: 0; right: 0; z-index: 60; margin: 0;}
  #answer-summary {white-space: normal;}
  body:has(#annotate-tab-button.selected) #idglow-banner p {white-space: normal !important;}
  button, label:has(input[type=radio]), label:has(input[type=checkbox]) {min-height: 44px !important;}
}
"""

# The upload box: its label sits above the drop zone and beside the box's buttons (never over the upload icon or
# them); every chosen file is listed in a compact row (none hidden below a fixed height, so a rejected file can be
# found and removed with ×); an upload as received is never served back, so its row shows no download link (the
# link would answer 404). On a phone every control of the Generate tab is a 44 px touch target.
UPLOAD_CSS = """
#gen-files > label[data-testid="block-label"] {position: static; display: flex; width: auto;
  max-width: calc(100% - 76px); white-space: normal; line-height: 1.3; border-radius: 0 0 var(--radius-sm) 0;}
#gen-files .upload-container:not(.icon-mode) {height: 104px !important; min-height: 0 !important;}
#gen-files [data-testid="upload-text"] {line-height: 1.25;}
#gen-files [data-testid="upload-icon"] {width: 22px; height: 22px; margin-bottom: 2px;}
#gen-files .file-preview-holder {max-height: none !important; overflow: visible !important;}
#gen-files .file-preview tr.file {padding-top: 0 !important; padding-bottom: 0 !important; margin: 0 !important;
  align-items: center;}
#gen-files .file-preview tr.file > td {margin-top: 0 !important; margin-bottom: 0 !important;}
#gen-files .file-preview td.filename {align-items: center;}
#gen-files .file-preview td.download {display: none;}
#gen-files .file-preview button[aria-label="Remove this file"] {min-width: 28px; min-height: 28px; left: 0;
  color: var(--body-text-color); font-size: 1.1em;}
.tab-container button[role="tab"].selected, button[role="tab"].selected {color: #c2410c;}
@media (max-width: 640px) {
  #idglow-title h1 {font-size: 1.45rem !important; margin-bottom: 0 !important;}
  #idglow-banner p {font-size: 12px; line-height: 1.35;}
  #gen-files > label[data-testid="block-label"] {max-width: calc(100% - 100px);}
  #gen-files .file-preview button[aria-label="Remove this file"] {min-width: 44px; min-height: 44px;}
  #gen-tab button, #gen-tab .icon-button {min-width: 44px; min-height: 44px;}
  #gen-tab a.download-link {display: inline-flex; align-items: center; min-height: 44px;}
  #gen-tab input[type="text"], #gen-tab input[type="number"], #gen-tab textarea {min-height: 44px;}
  #gen-tab summary, #gen-tab button.label-wrap {min-height: 44px; align-items: center;}
}
"""

CSS = GENERATE_CSS + ANNOTATE_CSS + NOTICE_CSS + PHONE_CSS + UPLOAD_CSS

# After a successful sign-in: the messages of earlier failed attempts ("wrong user name or password") go away.
CLEAR_TOASTS_JS = """
() => { document.querySelectorAll('[data-testid="toast-close"]').forEach((b) => b.click()); }
"""

SHORTCUTS_MD = """
**Keys** (outside text boxes):
<kbd>a</kbd> A better · <kbd>b</kbd> B better · <kbd>t</kbd> tie · <kbd>x</kbd> both bad ·
<kbd>s</kbd> slightly · <kbd>c</kbd> clearly ·
<kbd>1</kbd>–<kbd>6</kbd> then <kbd>a</kbd>/<kbd>b</kbd>/<kbd>t</kbd> identity of person 1–6 ·
<kbd>y</kbd> then <kbd>a</kbd>/<kbd>b</kbd>/<kbd>t</kbd> texture ·
<kbd>r</kbd> then <kbd>a</kbd>/<kbd>b</kbd>/<kbd>t</kbd> fewer artifacts ·
<kbd>Enter</kbd> submit · <kbd>k</kbd> skip · <kbd>u</kbd> undo last vote ·
<kbd>f</kbd> flag: <kbd>a</kbd>/<kbd>b</kbd> image, number keys failure types, <kbd>Enter</kbd> flag ·
<kbd>Esc</kbd> cancel
"""

GUIDELINES_MD = """
**How to judge a pair**

1. Look at the reference photos first: each person must be recognisable in the image as the *same* person.
2. **Overall**: which image is the better group photo of these people (identity, natural composition, quality)?
   *Tie* when they are equally good, *both bad* when neither is usable. Say whether the difference is slight or clear.
3. **Identity per person**: for each person, in which image do they look more like their reference? A person
   who is missing, duplicated or swapped with someone else loses.
4. **Texture**: which image has the more natural, consistent skin, hair and lighting?
5. **Artifacts**: which image has *fewer* artifacts (extra fingers, melted faces, broken objects)?
6. Age task: people should look like themselves *at the target age*, with the body of that age (a child
   should not look like a small adult).
7. **Flag** an image with the failure types that apply (identity swap, missing person, mini adult, ...).
   Skip a pair you cannot judge. Undo works for your last vote within 5 minutes.
"""

# Runs once on page load. Keys map to clicks on the inputs of the Annotate tab (by elem_id and value).
SHORTCUTS_JS = """
() => {
  if (window.__idglowShortcuts) return;
  window.__idglowShortcuts = true;
  let prefix = null;
  const hint = (text) => {
    const el = document.querySelector('#shortcut-hint');
    if (el) el.textContent = text;
  };
  const annotateVisible = () => {
    const el = document.querySelector('#annotate-overall');
    return el && el.offsetParent !== null;
  };
  const pick = (id, value) => {
    const input = document.querySelector(`#${id} input[type=radio][value="${value}"]`);
    if (input) { input.click(); return true; }
    return false;
  };
  const click = (id) => {
    const el = document.querySelector(`#${id}`);
    if (el) el.click();
  };
  const showFlagForm = () => {
    const box = document.querySelector('#flag-box');
    if (box) box.scrollIntoView({block: 'nearest'});
  };
  const FLAG_HINT = 'flag: a or b picks the image, number keys the failure types, Enter flags, Esc cancels';
  const flagKey = (key) => {
    if (key === 'a' || key === 'b') { pick('flag-side', key === 'a' ? 'left' : 'right'); return true; }
    if (/^[1-9]$/.test(key)) {
      const boxes = document.querySelectorAll('#flag-types input[type=checkbox]');
      const box = boxes[Number(key) - 1];
      if (box) box.click();
      return true;
    }
    if (key === 'enter') { click('flag-run'); prefix = null; hint(''); return true; }
    return false;
  };
  const SIDE = {a: 'left', b: 'right', t: 'tie'};
  // While a vote, skip or undo is on its way the pair changes: keys pressed then would be half kept on the next
  // pair, so they are refused until the page has the answer (the progress line or the notice changed).
  const stamp = () => ['#annotate-progress', '#annotate-notice'].map(
    (q) => (document.querySelector(q) || {}).textContent || '').join('|');
  let waitingSince = 0, waitingFor = null;
  const waiting = () => {
    if (waitingFor === null) return false;
    if (stamp() !== waitingFor || Date.now() - waitingSince > 8000) { waitingFor = null; return false; }
    return true;
  };
  const send = (id) => { waitingFor = stamp(); waitingSince = Date.now(); click(id); };
  ['annotate-submit', 'annotate-skip', 'annotate-undo'].forEach((id) => document.addEventListener('click', (ev) => {
    if (ev.isTrusted && ev.target.closest && ev.target.closest(`#${id}`)) { waitingFor = stamp(); waitingSince = Date.now(); }
  }, true));
  document.addEventListener('keydown', (ev) => {
    const tag = (ev.target && ev.target.tagName || '').toLowerCase();
    if (['input', 'textarea', 'select'].includes(tag) && ev.target.type !== 'radio' && ev.target.type !== 'checkbox') return;
    if (ev.ctrlKey || ev.metaKey || ev.altKey || !annotateVisible()) return;
    const key = ev.key.toLowerCase();
    if (waiting()) { hint('wait: the next pair is loading'); ev.preventDefault(); return; }
    if (key === 'escape') { prefix = null; hint(''); return; }
    if (prefix === 'f') { if (flagKey(key)) ev.preventDefault(); return; }
    if (prefix !== null && key in SIDE) {
      const target = prefix === 'y' ? 'annotate-texture' : prefix === 'r' ? 'annotate-artifacts' : `annotate-identity-${prefix}`;
      pick(target, SIDE[key]);
      prefix = null; hint(''); ev.preventDefault(); return;
    }
    if (/^[1-6]$/.test(key)) { prefix = Number(key) - 1; hint(`person ${key}: press a, b or t`); ev.preventDefault(); return; }
    if (key === 'y') { prefix = 'y'; hint('texture: press a, b or t'); ev.preventDefault(); return; }
    if (key === 'r') { prefix = 'r'; hint('fewer artifacts: press a, b or t'); ev.preventDefault(); return; }
    if (key === 'f') { prefix = 'f'; showFlagForm(); hint(FLAG_HINT); ev.preventDefault(); return; }
    const overall = {a: 'left', b: 'right', t: 'tie', x: 'both_bad'};
    if (key in overall) { pick('annotate-overall', overall[key]); ev.preventDefault(); return; }
    if (key === 's') { pick('annotate-strength', 'slight'); ev.preventDefault(); return; }
    if (key === 'c') { pick('annotate-strength', 'clear'); ev.preventDefault(); return; }
    if (key === 'enter') { send('annotate-submit'); ev.preventDefault(); return; }
    if (key === 'k') { send('annotate-skip'); ev.preventDefault(); return; }
    if (key === 'u') { send('annotate-undo'); ev.preventDefault(); return; }
  });
  // A click on the Annotate tab (also when it is already open, e.g. after a sign-in took the person there) gives
  // the keys to the pair.
  document.addEventListener('click', (ev) => {
    if (!ev.target.closest || !ev.target.closest('#annotate-tab-button')) return;
    setTimeout(() => {
      const pair = document.querySelector('#annotate-pair');
      if (!pair || pair.offsetParent === null) return;
      pair.setAttribute('tabindex', '-1');
      pair.focus({preventScroll: true});
    }, 50);
  });
  // The answer of every key, in one line above the candidates (the rows below are out of view on a laptop).
  const SHORT = {left: 'A', right: 'B', tie: 'same', both_bad: 'both bad', slight: 'slightly', clear: 'clearly'};
  const chosen = (id) => {
    const input = document.querySelector(`#${id} input[type=radio]:checked`);
    return input ? (SHORT[input.value] || input.value) : '–';
  };
  const summary = () => {
    const parts = [`<b>Overall</b> ${chosen('annotate-overall')}` + (
      document.querySelector('#annotate-strength input:checked') ? ` (${chosen('annotate-strength')})` : '')];
    for (let i = 0; i < 6; i++) {
      const row = document.querySelector(`#annotate-identity-${i}`);
      if (row && row.offsetParent !== null) parts.push(`<b>${i + 1}</b> ${chosen(`annotate-identity-${i}`)}`);
    }
    parts.push(`<b>y</b> texture ${chosen('annotate-texture')}`, `<b>r</b> artifacts ${chosen('annotate-artifacts')}`);
    const side = document.querySelector('#flag-side input:checked');
    const types = document.querySelectorAll('#flag-types input:checked').length;
    parts.push(`<b>f</b> flag ${side ? (SHORT[side.value] || side.value) + (types ? ` · ${types} type(s)` : '') : '–'}`);
    return parts.join(' · ');
  };
  setInterval(() => {
    const el = document.querySelector('#answer-summary');
    if (!el || el.offsetParent === null) return;
    const text = summary();
    if (el.dataset.text !== text) { el.innerHTML = text; el.dataset.text = text; }
  }, 250);
}
"""

# After a pair is shown on a visible Annotate tab: the focus leaves the sign-in form for the pair, so the
# shortcut keys work at once.
FOCUS_PAIR_JS = """
() => {
  const pair = document.querySelector('#annotate-pair');
  if (!pair || pair.offsetParent === null) return;
  pair.setAttribute('tabindex', '-1');
  pair.focus({preventScroll: true});
}
"""

DEMO_BANNER = "**Demo model:** images are abstract — see README to serve real weights"

OPERATOR_NOTES = """
This server runs the embedded **tiny demo model**: random, untrained weights that make abstract images, so that
the whole app (upload, generation, annotation, export) can be tried on any computer. To serve real photos, start it
with a FLUX checkpoint in diffusers format and IdGlow adapter weights:

`python app.py --model models/flux --adapter models/idglow-adapter`

(or set `IDGLOW_MODEL_DIR` and `IDGLOW_ADAPTER_DIR`). No trained IdGlow adapter is published: you train one on your
own group photos (`docs/training.md`). `docs/real-weights.md` says what to obtain and where, `docs/app.md` lists
every flag.
"""


def banner(tiny: bool, note: str = "") -> str:
    """The one-line notice above the tabs (``note`` is kept for callers; the details live in README, docs/ and the
    Generate tab's operator section)."""
    if not tiny:
        return "**IdGlow** · identity-preserving group photos."
    return DEMO_BANNER
