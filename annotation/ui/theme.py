"""Look and texts of the app: CSS, the keyboard shortcuts of the Annotate tab and the guidelines."""

from __future__ import annotations

import json

from annotation.ui.annotate_handlers import answer_elem_id, answer_names, screen_value
from idglow import preferences
from idglow.preferences import Question
from idglow.subjects import MAX_SUBJECTS

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
#gen-files .upload-container:not(.icon-mode) {height: 92px !important; min-height: 0 !important;}
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
  #gen-tab input:not([type=radio]):not([type=checkbox]):not([type=file]):not([type=range]), #gen-tab textarea {
    min-height: 44px;}
  #gen-tab summary, #gen-tab button.label-wrap {min-height: 44px; align-items: center;}
}
"""

CSS = GENERATE_CSS + ANNOTATE_CSS + NOTICE_CSS + PHONE_CSS + UPLOAD_CSS

# After a successful sign-in: the messages of earlier failed attempts ("wrong user name or password") go away.
CLEAR_TOASTS_JS = """
() => { document.querySelectorAll('[data-testid="toast-close"]').forEach((b) => b.click()); }
"""

# Keys that are not answers: flag (then a/b, number keys, Enter), skip, undo, submit and cancel.
RESERVED_KEYS = {"f": "flag", "k": "skip", "u": "undo", "enter": "submit", "escape": "cancel"}
OTHER_KEYS_MD = """<kbd>Enter</kbd> submit · <kbd>k</kbd> skip · <kbd>u</kbd> undo last vote ·
<kbd>f</kbd> flag: <kbd>a</kbd>/<kbd>b</kbd> image, number keys failure types, <kbd>Enter</kbd> flag ·
<kbd>Esc</kbd> cancel"""
# How the answer summary and the key legend say a choice (by its value on the form); else the choice's label.
CHOICE_WORDS = {"left": "A", "right": "B", "tie": "same", "both_bad": "both bad", "slight": "slightly",
                "clear": "clearly"}
LEGEND_WORDS = {"left": "A better", "right": "B better", "tie": "tie"}  # the primary question's choices


# How the key hint and the legend name a question whose name alone would not say which side a key picks.
SPOKEN_NAMES = {"artifacts": "fewer artifacts"}


def _words(question: Question) -> str:
    return question.name.replace("_", " ")


def _spoken(question: Question) -> str:
    return SPOKEN_NAMES.get(question.name, _words(question))


def _kbd(keys) -> str:
    return "/".join(f"<kbd>{k}</kbd>" for k in keys)


def _press(keys) -> str:
    keys = list(keys)
    return "press " + (f"{', '.join(keys[:-1])} or {keys[-1]}" if len(keys) > 1 else keys[0])


def _picks(question: Question, name: str) -> dict[str, dict]:
    """The keys of ``question`` for its widget ``name``: each picks one choice (by its value on the form)."""
    return {key: {"pick": [answer_elem_id(name), screen_value(c.value)], "owner": question.name}
            for key, c in zip(question.keys, question.choices)}


def _add_key(keys: dict[str, dict], key: str, entry: dict, owner: str) -> None:
    """``keys[key] = entry``, refusing a key that is reserved or already answers another question."""
    if key in RESERVED_KEYS:
        raise ValueError(f"question {owner!r}: key {key!r} is the {RESERVED_KEYS[key]} key; declare another")
    if key in keys:
        raise ValueError(f"question {owner!r}: key {key!r} is already a key of question {keys[key]['owner']!r}; "
                         "declare another key or a prefix_key")
    keys[key] = entry


def _person_keys(question: Question) -> dict[str, dict]:
    """Number key of each person (1, 2, ...), then the question's keys for that person's widget."""
    out = {}
    for i, name in enumerate(answer_names(question)):
        what = f"{_words(question)} of person {i + 1}" if question.prefix_key else f"person {i + 1}"
        out[str(i + 1)] = {"hint": f"{what}: {_press(question.keys)}", "keys": _picks(question, name),
                           "owner": question.name}
    return out


def key_map(questions: preferences.Questions = None) -> dict[str, dict]:
    """The Annotate tab's keys, from the declared questions: key → ``{"pick": [element id, value]}`` (a choice)
    or ``{"hint": text, "keys": {...}}`` (a prefix: the keys that may follow it). Keys pressed alone come from
    ``Question.keys``; a ``prefix_key`` or, per person, the person's number comes first. ValueError on a key that
    two questions share or that another action uses."""
    root: dict[str, dict] = {}
    for question in preferences.declared(questions):
        if not question.keys:
            continue
        if question.per_person:
            keys = _person_keys(question)
            entries = {question.prefix_key: {"hint": f"{_words(question)}: press the person's number",
                                             "keys": keys, "owner": question.name}} if question.prefix_key else keys
        elif question.prefix_key:
            entries = {question.prefix_key: {"hint": f"{_spoken(question)}: {_press(question.keys)}",
                                             "keys": _picks(question, question.name), "owner": question.name}}
        else:
            entries = _picks(question, question.name)
        for key, entry in entries.items():
            _add_key(root, key, entry, question.name)
    return root


def _choice_words(question: Question) -> dict[str, str]:
    return {screen_value(c.value): CHOICE_WORDS.get(screen_value(c.value), c.label.lower())
            for c in question.choices}


def _summary_entry(question: Question, label: str, name: str, grades: list[Question]) -> dict:
    return {"label": label, "id": answer_elem_id(name), "person": question.per_person,
            "grades": [answer_elem_id(g.name) for g in grades]}


def summary_entries(questions: preferences.Questions = None) -> list[dict]:
    """The answer summary's parts in form order: the primary question with its grades in brackets, each person's
    answers (while that person's row is shown), then the other questions; each labelled with its keys."""
    declared = preferences.declared(questions)
    main = preferences.primary(declared)
    graded = [q for q in declared if q.grades == main.name]
    out = [_summary_entry(main, f"<b>{_words(main).capitalize()}</b>", main.name, graded)]
    for question in [q for q in declared if q.per_person]:
        for i, name in enumerate(answer_names(question)):
            # the person's number (after the prefix key, if any); the question answered by the number alone (identity)
            # goes unnamed
            named = bool(question.prefix_key) or not question.keys
            label = f"<b>{question.prefix_key}{i + 1}</b>" + (f" {_words(question)}" if named else "")
            out.append(_summary_entry(question, label, name, []))
    for question in [q for q in declared if not q.per_person and q is not main and q not in graded]:
        first = question.prefix_key or "/".join(question.keys)
        out.append(_summary_entry(question, f"<b>{first}</b> {_words(question)}" if first else _words(question),
                                  question.name, []))
    return out


def shortcuts_js(questions: preferences.Questions = None) -> str:
    """The page script of the Annotate tab's keys and answer summary, with the keys, summary parts and choice words
    derived from the declared questions (``key_map``, ``summary_entries``)."""
    declared = preferences.declared(questions)
    words = {answer_elem_id(name): _choice_words(q) for q in declared for name in answer_names(q)}
    data = {"root": key_map(declared), "summary": summary_entries(declared), "words": words}
    return SHORTCUTS_JS.replace("__IDGLOW_KEYS__", json.dumps(data))


def _legend_part(question: Question, primary: bool) -> str:
    """One question's keys in the legend: "<kbd>y</kbd> then <kbd>a</kbd>/<kbd>b</kbd>/<kbd>t</kbd> texture"."""
    if question.per_person:
        first = ((f"<kbd>{question.prefix_key}</kbd> then " if question.prefix_key else "")
                 + f"<kbd>1</kbd>–<kbd>{MAX_SUBJECTS}</kbd>")
        return f"{first} then {_kbd(question.keys)} {_words(question)} of person 1–{MAX_SUBJECTS}"
    if question.prefix_key:
        return f"<kbd>{question.prefix_key}</kbd> then {_kbd(question.keys)} {_spoken(question)}"
    alone = not primary and question.grades is None  # a question of its own answered by single keys: named
    words = {**_choice_words(question), **(LEGEND_WORDS if primary else {})}
    return " · ".join(f"<kbd>{k}</kbd> {_words(question) + ' ' if alone else ''}{words[screen_value(c.value)]}"
                      for k, c in zip(question.keys, question.choices))


def shortcuts_md(questions: preferences.Questions = None) -> str:
    """The key legend under the Annotate form: every declared question's keys, then the other actions."""
    main = preferences.primary(questions)
    parts = [_legend_part(q, q is main) for q in preferences.declared(questions) if q.keys]
    return "**Keys** (outside text boxes):\n" + " ·\n".join(parts) + " ·\n" + OTHER_KEYS_MD + "\n"


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

# Runs once on page load (``shortcuts_js`` fills in the keys). Keys map to clicks on the inputs of the Annotate
# tab (by elem_id and value).
SHORTCUTS_JS = """
() => {
  if (window.__idglowShortcuts) return;
  window.__idglowShortcuts = true;
  // Derived from the declared questions (theme.shortcuts_js): root = key → {pick: [element id, value]} or
  // {hint, keys} (a prefix); summary = the parts of the answer line; words = element id → value → text.
  const KEYS = __IDGLOW_KEYS__;
  let node = null, flagging = false;
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
    if (key === 'enter') { click('flag-run'); flagging = false; hint(''); return true; }
    return false;
  };
  // A key that follows a prefix picks its choice and ends the prefix, or opens the next prefix; a key pressed
  // alone picks its choice and leaves a prefix in progress as it is.
  const follow = (entry, afterPrefix) => {
    if (entry.pick) {
      pick(entry.pick[0], entry.pick[1]);
      if (afterPrefix) { node = null; hint(''); }
      return;
    }
    node = entry; hint(entry.hint);
  };
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
    if (key === 'escape') { node = null; flagging = false; hint(''); return; }
    if (flagging) { if (flagKey(key)) ev.preventDefault(); return; }
    if (node !== null && Object.hasOwn(node.keys, key)) { follow(node.keys[key], true); ev.preventDefault(); return; }
    if (Object.hasOwn(KEYS.root, key)) { follow(KEYS.root[key], false); ev.preventDefault(); return; }
    if (key === 'f') { node = null; flagging = true; showFlagForm(); hint(FLAG_HINT); ev.preventDefault(); return; }
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
  const chosen = (id) => {
    const input = document.querySelector(`#${id} input[type=radio]:checked`);
    return input ? ((KEYS.words[id] || {})[input.value] || input.value) : '–';
  };
  const shown = (id) => { const row = document.querySelector(`#${id}`); return row && row.offsetParent !== null; };
  const summary = () => {
    const parts = [];
    for (const part of KEYS.summary) {
      if (part.person && !shown(part.id)) continue;
      const grades = part.grades.filter((id) => document.querySelector(`#${id} input:checked`)).map(chosen);
      parts.push(`${part.label} ${chosen(part.id)}` + (grades.length ? ` (${grades.join(', ')})` : ''));
    }
    const side = document.querySelector('#flag-side input:checked');
    const types = document.querySelectorAll('#flag-types input:checked').length;
    const sideText = side ? ({left: 'A', right: 'B'}[side.value] || side.value) : '';
    parts.push(`<b>f</b> flag ${side ? sideText + (types ? ` · ${types} type(s)` : '') : '–'}`);
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
