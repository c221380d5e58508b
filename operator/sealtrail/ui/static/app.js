// sealtrail audit UI: keyboard navigation, live tail, saved filters. No framework, no eval,
// no inline handlers (the Content-Security-Policy allows scripts from this origin only).
"use strict";

function rowLinks() {
  return Array.from(document.querySelectorAll("#rows a.open"));
}

function moveFocus(step) {
  const links = rowLinks();
  if (!links.length) return;
  const at = links.indexOf(document.activeElement);
  const next = at < 0 ? 0 : Math.min(links.length - 1, Math.max(0, at + step));
  links[next].focus();
  links[next].closest("tr").scrollIntoView({block: "nearest"});
}

function closeDetail() {
  const detail = document.getElementById("detail");
  if (detail && detail.firstChild) {
    const opener = detail.dataset.opener && document.querySelector(
      `#rows tr[data-seq="${detail.dataset.opener}"] a.open`);
    detail.replaceChildren();
    if (opener) opener.focus();
  }
}

document.addEventListener("keydown", (event) => {
  const target = event.target;
  const typing = target instanceof HTMLElement &&
    (target.isContentEditable || ["INPUT", "SELECT", "TEXTAREA"].includes(target.tagName));
  if (event.key === "Escape") {
    if (typing) target.blur();
    closeDetail();
    return;
  }
  if (typing || event.ctrlKey || event.metaKey || event.altKey) return;
  if (event.key === "j") { moveFocus(1); event.preventDefault(); }
  else if (event.key === "k") { moveFocus(-1); event.preventDefault(); }
  else if (event.key === "/") {
    const search = document.getElementById("f-q");
    if (search) { search.focus(); search.select(); event.preventDefault(); }
  }
});

document.addEventListener("click", (event) => {
  const target = event.target;
  if (!(target instanceof Element)) return;
  if (target.closest(".close-detail")) closeDetail();
  const link = target.closest("#rows a.open");
  if (link) document.getElementById("detail").dataset.opener = link.closest("tr").dataset.seq;
});

// After htmx puts an event into the panel, move focus there (a screen reader reads it).
document.addEventListener("htmx:afterSwap", (event) => {
  if (event.target && event.target.id === "detail") {
    const article = document.getElementById("detail-article");
    if (article) article.focus();
  }
});

// -- live tail --------------------------------------------------------------------------------
let source = null;
let paused = false;
let held = [];

function tailState(text) {
  const state = document.getElementById("tail-state");
  if (state) state.textContent = text;
}

function addRow(html) {
  const rows = document.getElementById("rows");
  const template = document.createElement("template");
  template.innerHTML = html.trim();
  const row = template.content.firstElementChild;
  if (!row) return;
  rows.prepend(row);
  if (window.htmx) window.htmx.process(row);
}

function startTail(button) {
  let src = button.dataset.src;
  const top = document.querySelector("#rows tr");
  if (top) src = src.replace(/([?&])after=[0-9]*/, `$1after=${top.dataset.seq}`);
  source = new EventSource(src);
  source.addEventListener("row", (message) => {
    if (paused) { held.push(message.data); tailState(`paused: ${held.length} new`); return; }
    addRow(message.data);
  });
  button.textContent = "Live tail: on (pause)";
  button.setAttribute("aria-pressed", "true");
  tailState("following new events");
}

document.addEventListener("click", (event) => {
  const button = event.target instanceof Element && event.target.closest("#tail-toggle");
  if (!button) return;
  if (!source) { startTail(button); return; }
  paused = !paused;
  if (paused) {
    button.textContent = "Live tail: paused (resume)";
    button.setAttribute("aria-pressed", "false");
    tailState("paused");
  } else {
    held.forEach(addRow);
    held = [];
    button.textContent = "Live tail: on (pause)";
    button.setAttribute("aria-pressed", "true");
    tailState("following new events");
  }
});

// -- saved filters (the user's own, in this browser) -------------------------------------------
const SAVED_KEY = "sealtrail.savedFilters";

function savedFilters() {
  try { return JSON.parse(localStorage.getItem(SAVED_KEY) || "[]"); } catch { return []; }
}

function renderSaved() {
  const list = document.getElementById("saved-list");
  if (!list) return;
  list.querySelectorAll("li.own").forEach((item) => item.remove());
  for (const saved of savedFilters()) {
    const item = document.createElement("li");
    item.className = "own";
    const link = document.createElement("a");
    link.href = `/ui/events?${saved.query}`;
    link.textContent = saved.name;
    item.append(link);
    list.append(item);
  }
}

document.addEventListener("click", (event) => {
  const button = event.target instanceof Element && event.target.closest("#save-filter");
  if (!button) return;
  const name = window.prompt("Name this filter", button.dataset.query || "all events");
  if (!name) return;
  const saved = savedFilters().filter((item) => item.name !== name);
  saved.push({name, query: button.dataset.query});
  localStorage.setItem(SAVED_KEY, JSON.stringify(saved));
  renderSaved();
});

document.addEventListener("DOMContentLoaded", renderSaved);

// -- the row's hash, recomputed by this browser ------------------------------------------------
// record_hash is SHA-256 of the stored bytes with their `,"record_hash":"…"` member cut out
// (rows are canonical JSON with sorted keys, so that member is never the first). WebCrypto
// exists only on a secure context (HTTPS, or localhost through a port-forward); elsewhere the
// paragraph keeps saying so, and the server's verdict (the Integrity page) stands alone.
async function checkRowHash() {
  const note = document.getElementById("browser-check");
  const exact = document.getElementById("exact-row");
  if (!note || !exact || note.dataset.done || !window.isSecureContext || !window.crypto.subtle) {
    return;
  }
  note.dataset.done = "1";
  const expected = note.dataset.recordHash;
  const member = `,"record_hash":"${expected}"`;
  const text = exact.textContent;
  if (!text.includes(member)) {
    note.textContent = "Checked by this browser: the row does not carry the record_hash shown.";
    note.classList.add("bad");
    return;
  }
  const bytes = new TextEncoder().encode(text.replace(member, ""));
  const digest = new Uint8Array(await window.crypto.subtle.digest("SHA-256", bytes));
  const hex = Array.from(digest, (byte) => byte.toString(16).padStart(2, "0")).join("");
  if (hex === expected) {
    note.textContent = "Checked by this browser (WebCrypto SHA-256): the row hashes to its record_hash.";
    note.classList.add("good");
  } else {
    note.textContent = `Checked by this browser: the row hashes to ${hex}, NOT to its record_hash. The row was changed.`;
    note.classList.add("bad");
  }
}

document.addEventListener("DOMContentLoaded", checkRowHash);
document.addEventListener("htmx:afterSwap", checkRowHash);

// -- a checkpoint's signature, re-checked by this browser ----------------------------------------
// The signed statement is the canonical JSON (sorted keys, no spaces) of the checkpoint's fields
// (chain/checkpoint.py); its values are ASCII, where JSON.stringify writes what the server does.
// The key is the worker's public key as the page gives it: its id is recomputed here and must be
// the one the checkpoint names; whether to trust that key is for the reader to compare.
function fromBase64(text) {
  return Uint8Array.from(atob(text), (char) => char.charCodeAt(0));
}

async function checkSignature() {
  const note = document.getElementById("signature-check");
  const exact = document.getElementById("exact-row");
  if (!note || !exact || note.dataset.done || !note.dataset.publicKey ||
      !window.isSecureContext || !window.crypto.subtle) {
    return;
  }
  note.dataset.done = "1";
  const row = JSON.parse(exact.textContent);
  const extra = row.extra || {};
  const statement = {
    head_hash: extra.checkpoint_head_hash,
    key_id: extra.checkpoint_key_id,
    signed_at: extra.checkpoint_signed_at,
  };
  if (row.store_id !== undefined) statement.store_id = row.store_id;
  statement.tenant_id = row.tenant_id;
  statement.tenant_seq = Number(extra.checkpoint_tenant_seq);
  statement.type = "sealtrail.checkpoint/v1";
  const raw = fromBase64(note.dataset.publicKey);
  const digest = new Uint8Array(await window.crypto.subtle.digest("SHA-256", raw));
  const keyId = Array.from(digest.slice(0, 8), (byte) => byte.toString(16).padStart(2, "0")).join("");
  let valid = false;
  try {
    const key = await window.crypto.subtle.importKey("raw", raw, {name: "Ed25519"}, false, ["verify"]);
    valid = keyId === statement.key_id && await window.crypto.subtle.verify(
      {name: "Ed25519"}, key, fromBase64(extra.checkpoint_signature),
      new TextEncoder().encode(JSON.stringify(statement)));
  } catch (error) {
    note.textContent = `This browser could not check the signature: ${error}`;
    return;
  }
  note.textContent = valid
    ? `Checked by this browser (WebCrypto Ed25519): the signature of key ${keyId} over rows 1..${statement.tenant_seq} verifies.`
    : "Checked by this browser: the checkpoint's signature does NOT verify with this worker's key.";
  note.classList.add(valid ? "good" : "bad");
}

document.addEventListener("DOMContentLoaded", checkSignature);
document.addEventListener("htmx:afterSwap", checkSignature);
