/*
 * Parley's web chat widget: one <script> tag, no build step, no dependencies.
 *
 *   <script src="https://HOST/widget.js" data-site-key="pk_..." async></script>
 *   optional: data-title="Help", data-lang="de"
 *
 * Why it is written the way it is:
 * - Everything lives in a Shadow DOM under its own element (<parley-chat>), so the host page's
 *   CSS cannot reach in and ours cannot leak out. Styles are a constructed stylesheet where the
 *   browser has them, so a host page's CSP needs no 'unsafe-inline' for styles.
 * - Model and user text are never parsed as HTML: Markdown is turned into nodes with
 *   createElement and textContent, and links keep only http(s) URLs. Nothing here assigns
 *   innerHTML. A masked link shows the host it goes to after its text, unless the text is
 *   that address: "[https://bank.example](https://evil.example/...)" reads
 *   "https://bank.example (evil.example)", so text cannot pass for another address.
 * - The visitor's token stays in localStorage (per host site), so a reload keeps the
 *   conversation; the history comes back from /v1/history and the stream resumes after the
 *   last event seen (?last_event_id=), so a dropped connection neither loses nor repeats text.
 * - Every failure has a visible state and a retry with backoff; a retried message keeps its
 *   Idempotency-Key, so the server records and answers it once.
 */
(() => {
  "use strict";

  // The page's document through Document's own methods and getters: an element of the page
  // with a name (<img name="currentScript">, <form name="querySelector">, in a forum post)
  // is what document.<that name> gives. Named "currentScript", its src was taken for Parley's
  // origin, the visitor's token and messages sent there; named "body" or "createElement", the
  // chat never appeared.
  const DOC = Document.prototype;
  const docGet = (name) => Object.getOwnPropertyDescriptor(DOC, name).get.call(document);
  const page = {
    body: () => docGet("body"),
    query: (selector) => DOC.querySelector.call(document, selector),
    create: (tag) => DOC.createElement.call(document, tag),
    createNS: (ns, tag) => DOC.createElementNS.call(document, ns, tag),
    fragment: () => DOC.createDocumentFragment.call(document),
    on: (target, type, handler, options) =>
      EventTarget.prototype.addEventListener.call(target, type, handler, options),
  };
  const current = docGet("currentScript");
  const script = current instanceof HTMLScriptElement ? current : null;
  // One chat a page, whatever number of tags it has: a tag in <head> adds its element only
  // once <body> is there, so until then it says so on the window (a second tag in the same
  // <head> found no element and added a second chat).
  const MOUNTING = Symbol.for("parley-widget mounting");
  if (!script || !script.src || page.query("parley-chat") || window[MOUNTING]) return;
  const API = new URL(script.src).origin;
  const SITE_KEY = script.dataset.siteKey || "";
  if (!SITE_KEY) {
    console.warn("Parley widget: the script tag needs data-site-key");
    return;
  }

  // ---- strings -------------------------------------------------------------------------
  const STRINGS = {
    en: {
      title: "Chat with us", open: "Open chat", close: "Close chat", log: "Conversation",
      input: "Your message", placeholder: "Ask a question…", send: "Send",
      unavailable: "The assistant can't be reached right now. Retrying…",
      closed: "The chat isn't available on this page.",
      tooMany: "Too many messages, try again in {n} s.",
      notSent: "This message could not be sent.", sending: "Sending…",
      tooLong: "This message is too long.",
      tooLongAt: "This message is too long: at most {n} characters.",
      sources: "Sources", you: "You", bot: "Assistant",
      waiting: "Connecting you with a person…", human: "You are now talking with a person.",
      back: "You are talking with the assistant again.", earlier: "Show earlier messages",
      humanNamed: "You are talking with {name}.", translated: "Translated",
      original: "Original",
    },
    de: {
      title: "Chatten Sie mit uns", open: "Chat öffnen", close: "Chat schließen",
      log: "Unterhaltung", input: "Ihre Nachricht", placeholder: "Stellen Sie eine Frage…",
      send: "Senden",
      unavailable: "Der Assistent ist gerade nicht erreichbar. Neuer Versuch läuft…",
      closed: "Der Chat ist auf dieser Seite nicht verfügbar.",
      tooMany: "Zu viele Nachrichten, versuchen Sie es in {n} s erneut.",
      notSent: "Diese Nachricht konnte nicht gesendet werden.", sending: "Wird gesendet…",
      tooLong: "Diese Nachricht ist zu lang.",
      tooLongAt: "Diese Nachricht ist zu lang: höchstens {n} Zeichen.",
      sources: "Quellen", you: "Sie", bot: "Assistent",
      waiting: "Sie werden mit einer Person verbunden…",
      human: "Sie sprechen jetzt mit einer Person.",
      back: "Sie sprechen wieder mit dem Assistenten.", earlier: "Frühere Nachrichten anzeigen",
      humanNamed: "Sie sprechen mit {name}.", translated: "Übersetzt", original: "Original",
    },
    fr: {
      title: "Discutons", open: "Ouvrir le chat", close: "Fermer le chat", log: "Conversation",
      input: "Votre message", placeholder: "Posez une question…", send: "Envoyer",
      unavailable: "L'assistant est injoignable pour le moment. Nouvelle tentative…",
      closed: "Le chat n'est pas disponible sur cette page.",
      tooMany: "Trop de messages, réessayez dans {n} s.",
      notSent: "Ce message n'a pas pu être envoyé.", sending: "Envoi…",
      tooLong: "Ce message est trop long.",
      tooLongAt: "Ce message est trop long : {n} caractères au plus.",
      sources: "Sources", you: "Vous", bot: "Assistant",
      waiting: "Mise en relation avec une personne…",
      human: "Vous parlez maintenant avec une personne.",
      back: "Vous parlez de nouveau avec l'assistant.", earlier: "Messages précédents",
      humanNamed: "Vous parlez avec {name}.", translated: "Traduit", original: "Original",
    },
    es: {
      title: "Hable con nosotros", open: "Abrir el chat", close: "Cerrar el chat",
      log: "Conversación", input: "Su mensaje", placeholder: "Haga una pregunta…",
      send: "Enviar",
      unavailable: "No se puede contactar con el asistente ahora. Reintentando…",
      closed: "El chat no está disponible en esta página.",
      tooMany: "Demasiados mensajes, inténtelo de nuevo en {n} s.",
      notSent: "No se pudo enviar este mensaje.", sending: "Enviando…",
      tooLong: "Este mensaje es demasiado largo.",
      tooLongAt: "Este mensaje es demasiado largo: como máximo {n} caracteres.",
      sources: "Fuentes", you: "Usted", bot: "Asistente",
      waiting: "Le estamos conectando con una persona…",
      human: "Ahora está hablando con una persona.",
      back: "Vuelve a hablar con el asistente.", earlier: "Mostrar mensajes anteriores",
      humanNamed: "Está hablando con {name}.", translated: "Traducido", original: "Original",
    },
    ar: {
      title: "تحدث معنا", open: "افتح المحادثة", close: "أغلق المحادثة", log: "المحادثة",
      input: "رسالتك", placeholder: "اطرح سؤالاً…", send: "إرسال",
      unavailable: "لا يمكن الوصول إلى المساعد الآن. جارٍ إعادة المحاولة…",
      closed: "المحادثة غير متاحة في هذه الصفحة.",
      tooMany: "رسائل كثيرة جدًا، حاول مرة أخرى بعد {n} ث.",
      notSent: "تعذر إرسال هذه الرسالة.", sending: "جارٍ الإرسال…",
      tooLong: "هذه الرسالة طويلة جدًا.",
      tooLongAt: "هذه الرسالة طويلة جدًا: {n} حرفًا على الأكثر.",
      sources: "المصادر", you: "أنت", bot: "المساعد",
      waiting: "جارٍ توصيلك بشخص…", human: "أنت تتحدث الآن مع شخص.",
      back: "أنت تتحدث مع المساعد مرة أخرى.", earlier: "عرض الرسائل السابقة",
      humanNamed: "أنت تتحدث مع {name}.", translated: "مترجمة", original: "النص الأصلي",
    },
  };
  const RTL = new Set(["ar", "he", "fa", "ur"]);
  const wanted = [script.dataset.lang, ...(navigator.languages || [navigator.language])];
  const LANG = wanted.map((tag) => (tag || "").toLowerCase().split(/[-_]/)[0])
    .find((base) => base in STRINGS) || "en";
  const phrase = (key) => STRINGS[LANG][key] || STRINGS.en[key];
  const say = (key, fields = {}) =>
    phrase(key).replace(/\{(\w+)\}/g, (_, f) => String(fields[f]));

  // ---- small DOM helpers ---------------------------------------------------------------
  function el(tag, attrs = {}, ...children) {
    const node = page.create(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (name === "text") node.textContent = value;
      else if (name === "class") node.className = value;
      else node.setAttribute(name, value);
    }
    for (const child of children) if (child != null) node.append(child);
    return node;
  }

  function safeUrl(raw) {
    try {
      const url = new URL(String(raw).trim());
      return url.protocol === "https:" || url.protocol === "http:" ? url.href : null;
    } catch {
      return null;
    }
  }

  function link(url, label) {
    const a = el("a", { href: url, target: "_blank", rel: "noopener noreferrer" });
    a.append(label);
    return a;
  }

  // A link's text is the model's (a prompt injection's, maybe): where it goes is shown
  // after it, as the URL parser spells the host (punycode for look-alike letters), unless
  // the text is that address. An address can read as another host: one that names a user
  // (https://shop.example@evil.example/ goes to evil.example), or whose host as written is
  // not the parser's (a look-alike letter): its host is shown too, bare or masked.
  const bareAddress = (s) => s.trim().replace(/^https?:\/\//i, "").replace(/\/+$/, "");
  const writtenHost = (s) => /^\s*https?:\/\/([^/?#\s]*)/i.exec(s)?.[1].toLowerCase();
  function destination(label, url) {
    const parsed = new URL(url);
    const host = parsed.host;
    // Left to right, isolated: an override in the link's text (U+202E) does not reach it.
    const shown = el("span", { class: "host", dir: "ltr", text: ` (${host})` });
    if (parsed.username || parsed.password) return shown;
    const written = writtenHost(label);
    if (written !== undefined) return written === host ? null : shown;
    const text = bareAddress(label).toLowerCase();
    if (text === bareAddress(url).toLowerCase() || text === host) return null;
    return shown;
  }

  // ---- Markdown to nodes, never through HTML ------------------------------------------
  // `code`, **bold**, __bold__, *italic*, _italic_, [label](url), bare http(s) URLs.
  // A scanner, not a regular expression: one with a lazy search for each span's end tried
  // again from every opening `*`, `_` or `[` took quadratic time on a run of them ("*a *a
  // *a ...", "[[[["), and its nesting ("____...") ran out of stack, so one message froze or
  // broke the tab. Each span's end is looked up in tables built in one pass over the text, so
  // the time is linear in its length; spans nest at most INLINE_DEPTH deep, deeper ones are
  // text as written. What counts as a span is what the regular expression matched:
  //   (`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)      \*\*(?=\S)([\s\S]+?)\*\*
  //   (?<!\w)__(?=\S)([\s\S]+?)__(?!\w)       \*(?=[^\s*])([\s\S]*?[^\s*])?\*
  //   (?<!\w)_(?=[^\s_])([\s\S]*?[^\s_])?_(?!\w)
  //   \[([^\]\n]+)\]\(\s*<?([^()\s<>]+)>?\s*\)  (https?:\/\/[^\s<>()]+[^\s<>().,;:!?'"])
  const INLINE_DEPTH = 8;
  const isSpace = (c) => c !== undefined && /\s/.test(c);
  const isWord = (c) => c !== undefined && /\w/.test(c);
  const isSolid = (c) => c !== undefined && !/\s/.test(c);

  // next[i]: the first index from i on where `test` holds, -1 if none.
  function nextWhere(n, test) {
    const next = new Int32Array(n + 1).fill(-1);
    for (let i = n - 1; i >= 0; i--) next[i] = test(i) ? i : next[i + 1];
    return next;
  }

  function inlineTables(t) {
    const n = t.length;
    const runs = new Map(); // a run of exactly k backticks -> where such runs start
    const tickEnd = new Int32Array(n + 1);
    for (let i = n - 1; i >= 0; i--) tickEnd[i] = t[i] === "`" ? (t[i + 1] === "`" ? tickEnd[i + 1] : i + 1) : i;
    for (let i = 0; i < n; i++) {
      if (t[i] !== "`" || t[i - 1] === "`") continue;
      const k = tickEnd[i] - i;
      if (!runs.has(k)) runs.set(k, []);
      runs.get(k).push(i);
    }
    const lastUrlChar = new Int32Array(n + 1).fill(-1); // the last before i a URL may end on
    for (let i = 1; i <= n; i++) {
      lastUrlChar[i] = /[\s<>().,;:!?'"]/.test(t[i - 1]) ? lastUrlChar[i - 1] : i - 1;
    }
    return {
      runs, tickEnd, lastUrlChar, tails: new Map(),
      strongStar: nextWhere(n, (i) => t[i] === "*" && t[i + 1] === "*"),
      strongUnder: nextWhere(n, (i) => t[i] === "_" && t[i + 1] === "_" && !isWord(t[i + 2])),
      emStar: nextWhere(n, (i) => t[i] === "*" && isSolid(t[i - 1]) && t[i - 1] !== "*"),
      emUnder: nextWhere(n, (i) => t[i] === "_" && isSolid(t[i - 1]) && t[i - 1] !== "_"
        && !isWord(t[i + 1])),
      labelEnd: nextWhere(n, (i) => t[i] === "]" || t[i] === "\n"),
      urlStop: nextWhere(n, (i) => /[\s<>()]/.test(t[i])),
    };
  }

  const find = (next, i) => (i < next.length ? next[i] : -1);

  // The first start at or after `from` in a sorted list, -1 if none.
  function firstFrom(starts, from) {
    if (!starts) return -1;
    let lo = 0;
    let hi = starts.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (starts[mid] < from) lo = mid + 1;
      else hi = mid;
    }
    return lo < starts.length ? starts[lo] : -1;
  }

  // "](url)" after a link's label at r: where it ends and the URL, or null. Kept per r: every
  // "[" before one "]" shares its tail.
  function linkTail(t, r, tables) {
    if (tables.tails.has(r)) return tables.tails.get(r);
    let tail = null;
    let i = r + 1;
    if (t[i++] === "(") {
      while (isSpace(t[i])) i++;
      if (t[i] === "<") i++;
      const from = i;
      while (i < t.length && !/[()\s<>]/.test(t[i])) i++;
      const href = t.slice(from, i);
      if (t[i] === ">") i++;
      while (isSpace(t[i])) i++;
      if (href && t[i] === ")") tail = { end: i + 1, href };
    }
    tables.tails.set(r, tail);
    return tail;
  }

  // The span that starts at p, or null.
  function spanAt(t, p, tables) {
    const c = t[p];
    if (c === "`") {
      const open = tables.tickEnd[p];
      const k = open - p;
      const close = firstFrom(tables.runs.get(k), open + 1);
      return close < 0 ? null : { end: close + k, code: t.slice(open, close) };
    }
    if (c === "*") {
      if (t[p + 1] === "*") {
        const q = isSolid(t[p + 2]) ? find(tables.strongStar, p + 3) : -1;
        return q < 0 ? null : { end: q + 2, strong: t.slice(p + 2, q) };
      }
      const q = isSolid(t[p + 1]) ? find(tables.emStar, p + 2) : -1;
      return q < 0 ? null : { end: q + 1, em: t.slice(p + 1, q) };
    }
    if (c === "_" && !isWord(t[p - 1])) {
      if (t[p + 1] === "_") {
        const q = isSolid(t[p + 2]) ? find(tables.strongUnder, p + 3) : -1;
        return q < 0 ? null : { end: q + 2, strong: t.slice(p + 2, q) };
      }
      const q = isSolid(t[p + 1]) ? find(tables.emUnder, p + 2) : -1;
      return q < 0 ? null : { end: q + 1, em: t.slice(p + 1, q) };
    }
    if (c === "[") {
      const r = find(tables.labelEnd, p + 1);
      if (r < p + 2 || t[r] !== "]") return null;
      const tail = linkTail(t, r, tables);
      return tail && { end: tail.end, label: t.slice(p + 1, r), href: tail.href };
    }
    if (c === "h") {
      const from = t.startsWith("https://", p) ? p + 8 : t.startsWith("http://", p) ? p + 7 : -1;
      if (from < 0) return null;
      const stop = find(tables.urlStop, from);
      const last = tables.lastUrlChar[stop < 0 ? t.length : stop];
      return last > from ? { end: last + 1, bare: t.slice(p, last + 1) } : null;
    }
    return null;
  }

  function inline(text, inLink = false, depth = 0) {
    const out = page.fragment();
    if (depth >= INLINE_DEPTH || !/[`*_[h]/.test(text)) {
      out.append(text);
      return out;
    }
    const tables = inlineTables(text);
    const deeper = (inner, inside = inLink) => inline(inner, inside, depth + 1);
    let last = 0;
    for (let p = 0; p < text.length; p++) {
      const span = spanAt(text, p, tables);
      if (!span) continue;
      out.append(text.slice(last, p));
      const { code, strong, em, label, href, bare } = span;
      if (code !== undefined) out.append(el("code", { text: code.trim() || code }));
      else if (strong !== undefined) out.append(el("strong", {}, deeper(strong)));
      else if (em !== undefined) out.append(el("em", {}, deeper(em)));
      else if (label !== undefined) {
        const url = safeUrl(href);
        if (url && !inLink) {
          out.append(link(url, deeper(label, true)), destination(label, url) ?? "");
        } else out.append(deeper(label));
      } else {
        const url = safeUrl(bare);
        if (url && !inLink) out.append(link(url, bare), destination(bare, url) ?? "");
        else out.append(bare);
      }
      last = span.end;
      p = span.end - 1;
    }
    out.append(text.slice(last));
    return out;
  }

  function lines(node, parts) {
    parts.forEach((part, i) => {
      if (i) node.append(el("br"));
      node.append(inline(part));
    });
    return node;
  }

  const FENCE = /^\s{0,3}(`{3,}|~{3,})\s*([\w+#.-]*)/;
  const ITEM = /^\s*([-*+]|\d{1,9}[.)])\s+/;
  const HEADING = /^\s{0,3}#{1,6}\s+/;
  const QUOTE = /^\s{0,3}>\s?(.*)$/;
  const BREAK = /[\n\r\u2028\u2029]/;

  // A list item's marker and text: /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/ in two steps (that
  // expression took quadratic time on a long item with a line separator at its end).
  function listItem(line) {
    const open = ITEM.exec(line);
    const text = open && line.slice(open[0].length);
    return open && !BREAK.test(text) ? { marker: open[1], text } : null;
  }

  // A heading's text, without the closing #s and blanks: /^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$/
  // as the string methods do it (that expression took cubic time on a line of blanks).
  function heading(line) {
    const open = HEADING.exec(line);
    if (!open) return null;
    let text = line.slice(open[0].length).trimEnd();
    let end = text.length;
    while (end && text[end - 1] === "#") end--;
    text = text.slice(0, end).trimEnd();
    return BREAK.test(text) ? null : text;
  }

  const unified = (text) => String(text).replace(/\r\n?/g, "\n");

  function markdown(text) {
    return blocks(unified(text).split("\n"), 0, null);
  }

  // The nodes of the lines `src` from line `from`: 0, or a line at which an earlier parse of
  // the same lines started afresh. `parsed`, if given, learns the last such line before the
  // last one (which may still grow), `restart`, and how many of the nodes made come before
  // it, `made`: those are the same whatever follows (no paragraph open there, and each
  // list, quote or fence before it was ended by a line already whole).
  function blocks(src, from, parsed) {
    const out = page.fragment();
    let para = [];
    const flush = () => {
      if (para.length) out.append(lines(el("p"), para));
      para = [];
    };
    for (let i = from; i < src.length; i++) {
      if (parsed && !para.length && i < src.length - 1) {
        parsed.restart = i;
        parsed.made = out.childNodes.length;
      }
      const line = src[i];
      const fence = FENCE.exec(line);
      if (fence) {
        flush();
        const body = [];
        for (i++; i < src.length && !src[i].trim().startsWith(fence[1]); i++) body.push(src[i]);
        const code = el("code", { text: body.join("\n") });
        if (fence[2]) code.dataset.lang = fence[2];
        out.append(el("pre", { tabindex: "0" }, code));
        continue;
      }
      const item = listItem(line);
      if (item) {
        flush();
        const ordered = /\d/.test(item.marker);
        const list = el(ordered ? "ol" : "ul");
        const start = parseInt(item.marker, 10);
        if (ordered && start !== 1) list.setAttribute("start", start);
        for (; i < src.length; i++) {
          const next = listItem(src[i]);
          if (next && /\d/.test(next.marker) === ordered) {
            list.append(lines(el("li"), [next.text]));
          } else if (src[i].trim() && /^\s+/.test(src[i]) && list.lastChild) {
            list.lastChild.append(el("br"), inline(src[i].trim()));
          } else break;
        }
        i--;
        out.append(list);
        continue;
      }
      const title = heading(line);
      const quote = QUOTE.exec(line);
      if (title !== null) {
        flush();
        out.append(el("p", { class: "heading" }, el("strong", {}, inline(title))));
      } else if (quote) {
        flush();
        const quoted = [quote[1]];
        while (i + 1 < src.length && QUOTE.test(src[i + 1])) quoted.push(QUOTE.exec(src[++i])[1]);
        out.append(el("blockquote", {}, lines(el("p"), quoted)));
      } else if (!line.trim()) flush();
      else para.push(line);
    }
    flush();
    return out;
  }

  // ---- styles ----------------------------------------------------------------------------
  const CSS = `
:host { all: initial; }
* { box-sizing: border-box; }
.root { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", "Noto Sans Arabic", sans-serif;
  color: #1f2328; }
.launcher { position: fixed; inset-block-end: 20px; inset-inline-end: 20px; z-index: 2147483000;
  width: 56px; height: 56px; border-radius: 50%; border: 0; background: #1d4ed8; color: #fff;
  cursor: pointer; box-shadow: 0 4px 14px rgba(0,0,0,.25); display: grid; place-items: center; }
.launcher svg { width: 28px; height: 28px; fill: currentColor; }
.panel { position: fixed; inset-block-end: 88px; inset-inline-end: 20px; z-index: 2147483000;
  width: 380px; max-width: calc(100vw - 40px); height: 560px; max-height: calc(100vh - 108px);
  display: flex; flex-direction: column; background: #fff; border-radius: 14px; overflow: hidden;
  box-shadow: 0 10px 40px rgba(0,0,0,.25); }
.panel[hidden] { display: none; }
header { display: flex; align-items: center; gap: 8px; padding: 12px 14px; background: #1d4ed8;
  color: #fff; }
h2 { flex: 1; margin: 0; font-size: 16px; font-weight: 600; }
.close { border: 0; background: transparent; color: inherit; font-size: 22px; line-height: 1;
  width: 36px; height: 36px; border-radius: 8px; cursor: pointer; }
.banner { margin: 0; padding: 8px 14px; background: #fef3c7; color: #78350f; font-size: 14px; }
.banner[hidden] { display: none; }
.log { flex: 1; overflow-y: auto; padding: 14px; display: flex; flex-direction: column; gap: 10px;
  background: #f6f7f9; }
.msg { max-width: 85%; padding: 8px 12px; border-radius: 14px; overflow-wrap: anywhere;
  background: #fff; border: 1px solid #e3e6ea; align-self: flex-start; }
.msg.user { align-self: flex-end; background: #1d4ed8; color: #fff; border-color: #1d4ed8;
  white-space: pre-wrap; }
.msg.agent { border-color: #16a34a; }
.msg.pending { opacity: .75; }
.msg.failed { background: #fee2e2; color: #7f1d1d; border-color: #fca5a5; }
.msg .who { display: block; font-size: 12px; font-weight: 600; color: #15803d; }
.msg.agent { background: #f0fdf4; }
.msg .translated { margin-top: 4px; font-size: 12px; color: #57606a; }
.msg .translated summary { cursor: pointer; }
.msg .translated .original { margin-top: 4px; padding-inline-start: 8px;
  border-inline-start: 3px solid #bbf7d0; color: #1f2328; }
.handoff { margin: 0; padding: 6px 14px; background: #dcfce7; color: #14532d; font-size: 14px; }
/* An agent's name (or a page's title) of one long word breaks instead of running off. */
h2, .banner, .handoff { overflow-wrap: anywhere; }
.handoff[hidden] { display: none; }
.msg.notice { align-self: center; background: transparent; border: 0; color: #57606a;
  font-size: 13px; text-align: center; }
.msg p { margin: 0 0 .5em; } .msg p:last-child { margin-bottom: 0; }
.msg ul, .msg ol { margin: 0 0 .5em; padding-inline-start: 1.3em; }
.msg pre { margin: 0 0 .5em; padding: 8px; background: #f0f2f5; border-radius: 6px; overflow-x: auto;
  direction: ltr; text-align: left; }
.msg code { font: 13px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.msg :not(pre) > code { background: #f0f2f5; padding: 0 3px; border-radius: 4px; }
.msg blockquote { margin: 0 0 .5em; padding-inline-start: 8px; border-inline-start: 3px solid #d0d7de; }
.msg a { color: #1d4ed8; }
.msg.user a { color: #fff; }
.msg .status { display: block; font-size: 12px; opacity: .85; }
.sources { margin-top: 6px; padding-top: 6px; border-top: 1px solid #e3e6ea; font-size: 13px; }
.sources ul { margin: 2px 0 0; padding-inline-start: 1.2em; }
.typing::after { content: "…"; animation: blink 1s steps(2) infinite; }
.msg[aria-busy] .body > p:last-child::after,
.msg[aria-busy] .body > :is(ul, ol):last-child > li:last-child::after {
  content: " ▍"; color: #1d4ed8; animation: blink 1s steps(2) infinite; }
@keyframes blink { 50% { opacity: .2; } }
form { display: flex; gap: 8px; padding: 10px; border-top: 1px solid #e3e6ea; background: #fff; }
textarea { flex: 1; resize: none; font: inherit; padding: 8px 10px; border: 1px solid #8c959f;
  border-radius: 10px; min-height: 40px; max-height: 120px; color: inherit; background: #fff; }
.send { border: 0; border-radius: 10px; padding: 0 14px; background: #1d4ed8; color: #fff;
  font: inherit; font-weight: 600; cursor: pointer; }
.send:disabled { background: #8c959f; cursor: not-allowed; }
.earlier { align-self: center; border: 1px solid #d0d7de; background: #fff; border-radius: 8px;
  padding: 4px 10px; font: inherit; font-size: 13px; cursor: pointer; }
.sr { position: absolute; width: 1px; height: 1px; overflow: hidden; clip-path: inset(50%);
  white-space: nowrap; }
:focus-visible { outline: 3px solid #f59e0b; outline-offset: 2px; }
textarea:focus-visible { outline-offset: 0; }
@media (max-width: 480px) {
  .panel { inset: 0; width: 100%; max-width: none; height: 100%; max-height: none; border-radius: 0; }
  .root.open .launcher { display: none; }
}
@media (prefers-reduced-motion: reduce) { .msg *::after, .typing::after { animation: none; } }
`;

  function addStyles(shadow) {
    try {
      const sheet = new CSSStyleSheet();
      sheet.replaceSync(CSS);
      shadow.adoptedStyleSheets = [sheet];
    } catch {
      shadow.append(el("style", { text: CSS }));
    }
  }

  // ---- the widget's nodes -----------------------------------------------------------------
  function icon() {
    const ns = "http://www.w3.org/2000/svg";
    const svg = page.createNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    const path = page.createNS(ns, "path");
    path.setAttribute("d", "M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H9l-5 4v-4a2 2 0 0 1-2-2V6a2 2 0 0 1 2-2z");
    svg.append(path);
    return svg;
  }

  const host = page.create("parley-chat");
  const shadow = host.attachShadow({ mode: "open" });
  addStyles(shadow);
  const title = script.dataset.title || say("title");
  const ui = {
    launcher: el("button", {
      class: "launcher", type: "button", "aria-label": say("open"), "aria-expanded": "false",
      "aria-controls": "parley-panel",
    }, icon()),
    close: el("button", { class: "close", type: "button", "aria-label": say("close"), text: "×" }),
    banner: el("p", { class: "banner", role: "status", hidden: "" }),
    // Who the visitor is talking with while a person has (or is asked for) the conversation.
    handoff: el("p", { class: "handoff", role: "status", hidden: "" }),
    log: el("div", {
      class: "log", role: "log", "aria-live": "polite", "aria-label": say("log"), tabindex: "0",
    }),
    input: el("textarea", {
      id: "parley-input", rows: "1", maxlength: "8000", placeholder: say("placeholder"),
      autocomplete: "off",
    }),
    send: el("button", { class: "send", type: "submit", text: say("send") }),
  };
  ui.form = el("form", {},
    el("label", { class: "sr", for: "parley-input", text: say("input") }), ui.input, ui.send);
  ui.panel = el("section", {
    class: "panel", id: "parley-panel", role: "dialog", "aria-label": title, hidden: "",
    lang: LANG, dir: RTL.has(LANG) ? "rtl" : "ltr",
  }, el("header", {}, el("h2", { text: title }), ui.close), ui.banner, ui.handoff, ui.log, ui.form);
  ui.root = el("div", { class: "root", lang: LANG, dir: RTL.has(LANG) ? "rtl" : "ltr" },
    ui.panel, ui.launcher);
  shadow.append(ui.root);

  // ---- state kept across reloads ----------------------------------------------------------
  const STORE_KEY = `parley-widget:${SITE_KEY}`;
  const UNRECORDED_KEPT = 20;
  const saved = (() => {
    try {
      return JSON.parse(localStorage.getItem(STORE_KEY)) || {};
    } catch {
      return {};
    }
  })();
  const state = {
    token: saved.token || "",
    visitor: saved.visitor_id || "",
    expires: saved.expires_at || "",
    lastEventId: saved.last_event_id || "",
    starting: null,
    stream: null,
    streamAttempt: 0,
    reconnect: 0,
    silence: 0, // the timer that takes a silent stream for dropped (see watch)
    keepaliveS: 15, // how often the server's keep-alive comes, as it says
    seen: new Set(),
    // reply_to -> the last event id before its first delta: a reload resumes from the
    // earliest of these, so an answer cut by the reload streams again from its start.
    unfinished: new Map(),
    // reply_to -> the same, for answers and notices this page showed from their events, until
    // a history read has them: an answer's final event goes out before it is recorded, so a
    // reload in between finds it in neither the history nor the events after the last id.
    // The next page resumes from the earliest one its history lacks.
    unrecorded: new Map((Array.isArray(saved.unrecorded) ? saved.unrecorded : [])
      .filter((p) => Array.isArray(p) && p.every((v) => typeof v === "string"))
      .slice(-UNRECORDED_KEPT)),
    // What the history showed of notices (see noticeKey), agents' messages ("agent " + their
    // id) and changes of hands ("handoff " + their id): their events, replayed after the
    // last id an earlier page saw, are not shown again.
    noticed: new Set(),
    replies: new Map(), // reply_to -> { node, body, text, final }
    // The visitor's messages shown (ids: from the history, a 202, a `message` event), and
    // the Idempotency-Keys this tab sent: a `message` event shows another tab's message once.
    mine: new Set(),
    sentKeys: new Set(),
    shownById: new Set(), // of `mine`, those shown from the history or another tab's event
    problems: new Set(),
    refused: false, // the server refused this page for good (a wrong site key)
    rateUntil: 0,
    sending: null, // the newest send (a promise): the next one posts after it
    // The last `handoff` event: { state: "bot" | "waiting" | "human", agent }.
    handoff: saved.handoff && typeof saved.handoff === "object" ? saved.handoff : { state: "bot" },
    // Messages not yet taken by the server ({ key, text }): a reload or the site's next page
    // sends them again, under the same Idempotency-Key.
    outbox: Array.isArray(saved.outbox)
      ? saved.outbox.filter((m) => typeof m?.key === "string" && typeof m?.text === "string")
      : [],
    // The longest message the server takes (POST /v1/visitors says; 0: not known yet).
    maxChars: 0,
  };
  limitInput(saved.max_message_chars);

  function persist() {
    try {
      localStorage.setItem(STORE_KEY, JSON.stringify({
        token: state.token, visitor_id: state.visitor, expires_at: state.expires,
        max_message_chars: state.maxChars,
        last_event_id: state.unfinished.values().next().value ?? state.lastEventId,
        handoff: state.handoff, outbox: state.outbox,
        unrecorded: [...state.unrecorded].slice(-UNRECORDED_KEPT),
      }));
    } catch {
      /* storage disabled: the conversation lasts for this page only */
    }
  }

  // ---- the banner: one visible state for "unavailable" and "too many" -------------------
  let rateTimer = 0;
  function showState() {
    const wait = Math.ceil((state.rateUntil - Date.now()) / 1000);
    const text = state.refused ? say("closed") : wait > 0 ? say("tooMany", { n: wait })
      : state.problems.size ? say("unavailable") : "";
    ui.banner.textContent = text;
    ui.banner.hidden = !text;
    ui.send.disabled = wait > 0 || state.refused;
    if (wait > 0 && !rateTimer) {
      rateTimer = setInterval(() => {
        if (Date.now() >= state.rateUntil) {
          clearInterval(rateTimer);
          rateTimer = 0;
        }
        showState();
      }, 1000);
    }
  }
  function problem(kind, on) {
    if (on) state.problems.add(kind);
    else state.problems.delete(kind);
    showState();
  }
  const backoff = (attempt) => Math.min(30000, 1000 * 2 ** attempt) * (0.5 + Math.random() / 2);
  const sleep = (ms) => new Promise((done) => setTimeout(done, ms));

  // ---- HTTP ---------------------------------------------------------------------------------
  class Unavailable extends Error {}
  // The server refused this page for good (a wrong site key): retrying cannot help.
  class Refused extends Error {}

  async function call(path, { method = "GET", body, headers = {}, auth = true } = {}) {
    const all = { ...headers };
    if (body !== undefined) all["Content-Type"] = "application/json";
    if (auth) all.Authorization = `Bearer ${state.token}`;
    let response;
    try {
      response = await fetch(API + path, {
        method, headers: all, credentials: "omit", mode: "cors",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (error) {
      throw new Unavailable(String(error));
    }
    if (response.status >= 500) throw new Unavailable(`HTTP ${response.status}`);
    const data = await response.json().catch(() => null);
    return { status: response.status, data, headers: response.headers };
  }

  async function visitor() {
    const fresh = state.expires && Date.parse(state.expires) - Date.now() > 60000;
    if (state.token && fresh) return;
    const headers = { "X-Parley-Site-Key": SITE_KEY };
    let answer = await call("/v1/visitors", {
      method: "POST", headers, auth: false, body: state.token ? { visitor_token: state.token } : {},
    });
    if (answer.status !== 201 && state.token && answer.status !== 429) {
      answer = await call("/v1/visitors", { method: "POST", headers, auth: false, body: {} });
    }
    if (answer.status !== 201 || !answer.data || !answer.data.token) {
      // A wrong key or an origin the site does not list: say so to the site's developer.
      console.warn("Parley widget:", answer.data?.error?.message || `HTTP ${answer.status}`);
      // 401: an unknown key; 403: an origin the key's site does not list. (A 404 or 400 can
      // be a proxy's, during a deploy: tried again.)
      if (answer.status === 401 || answer.status === 403) {
        throw new Refused(`visitor refused (${answer.status})`);
      }
      throw new Error(`visitor refused (${answer.status})`);
    }
    if (state.visitor && answer.data.visitor_id !== state.visitor) {
      clearLog(); // another visitor now: the old one's messages are not theirs to see
      state.lastEventId = "";
    }
    state.token = answer.data.token;
    state.visitor = answer.data.visitor_id;
    state.expires = answer.data.expires_at || "";
    limitInput(answer.data.max_message_chars);
    persist();
  }

  // The box takes no more than the server does (conversation.max_message_chars): typed or
  // pasted text stops there, instead of a long message refused once sent.
  function limitInput(limit) {
    if (!Number.isSafeInteger(limit) || limit < 1) return;
    state.maxChars = limit;
    ui.input.maxLength = limit;
  }

  async function renewAfter401(answer) {
    if (answer.status !== 401) return false;
    state.expires = "";
    await visitor();
    return true;
  }

  // ---- messages in the log ------------------------------------------------------------------
  function atBottom() {
    return ui.log.scrollHeight - ui.log.scrollTop - ui.log.clientHeight < 40;
  }
  function add(node, before = null) {
    const follow = atBottom();
    ui.log.insertBefore(node, before);
    if (follow || !before) ui.log.scrollTop = ui.log.scrollHeight;
    return node;
  }
  function clearLog() {
    ui.log.replaceChildren();
    state.replies.clear();
    state.mine.clear();
    state.shownById.clear();
    state.unrecorded.clear();
    state.noticed.clear();
    state.handoff = { state: "bot" };
    showHandoff();
  }

  // Shown from a message's acceptance to the first sign of its answer. One for all: the
  // server may answer a burst of messages with one reply.
  const waiting = el("div", { class: "msg waiting", "aria-hidden": "true" },
    el("span", { class: "typing" }));
  function typing(on) {
    if (on) add(waiting);
    else waiting.remove();
  }

  // A bubble's direction comes from its own text (dir="auto"); the labels inside it carry a
  // dir of their own, which takes them out of that decision.
  const UI_DIR = RTL.has(LANG) ? "rtl" : "ltr";
  const label = (text) => el("span", { class: "sr", dir: UI_DIR, text: `${text}: ` });

  function userBubble(text) {
    const node = el("div", { class: "msg user", dir: "auto" });
    node.append(label(say("you")), el("span", { class: "text", text }));
    return node;
  }

  function reply(replyTo, before = null) {
    let entry = replyTo ? state.replies.get(replyTo) : undefined;
    if (!entry) {
      const body = el("div", { class: "body typing" });
      const node = el("div", { class: "msg bot", dir: "auto", "aria-busy": "true" },
        label(say("bot")), body);
      entry = { node, body, text: "", final: false, frame: 0 };
      if (replyTo) state.replies.set(replyTo, entry);
      add(node, before);
    }
    return entry;
  }

  // Deltas repaint at most once a frame; the final text at once, with aria-busy gone. What
  // the lines before the last restart point made (see blocks) is kept from frame to frame,
  // while the text still starts with those lines: a frame parses and redraws the rest only
  // (a long answer was parsed and redrawn whole at each frame, its cost growing with it).
  function paint(entry, now = false) {
    if (entry.frame && !now) return;
    cancelAnimationFrame(entry.frame);
    const render = () => {
      entry.frame = 0;
      const follow = atBottom();
      entry.body.classList.toggle("typing", !entry.final && !entry.text);
      const text = unified(entry.text);
      const src = text.split("\n");
      // kept.text: the lines the kept nodes were made of, and the restart line, which ended
      // the last of them, each with its line break; the text must still start with them (the
      // final text may differ from the deltas: its sources are shown apart).
      let kept = entry.kept;
      if (!kept || !text.startsWith(kept.text)) kept = { line: 0, nodes: 0, text: "" };
      const parsed = { restart: kept.line, made: 0 };
      const made = blocks(src, kept.line, parsed);
      while (entry.body.childNodes.length > kept.nodes) entry.body.lastChild.remove();
      entry.body.append(made);
      const nodes = kept.nodes + parsed.made;
      const from = kept.nodes ? kept.line + 1 : 0;
      const more = src.slice(from, parsed.restart + 1).map((line) => `${line}\n`).join("");
      entry.kept = nodes ? { line: parsed.restart, nodes, text: kept.text + more } : null;
      if (follow) ui.log.scrollTop = ui.log.scrollHeight;
    };
    if (now) render();
    else entry.frame = requestAnimationFrame(render);
  }

  function sources(list) {
    const items = [];
    const seen = new Set();
    for (const source of Array.isArray(list) ? list : []) {
      const title = String(source?.title || source?.url || "").trim();
      const url = safeUrl(source?.url);
      const key = url || title;
      if (!title || seen.has(key)) continue;
      seen.add(key);
      items.push(el("li", {}, url ? link(url, title) : title));
    }
    if (!items.length) return null;
    return el("div", { class: "sources" }, el("span", { text: say("sources") }), el("ul", {}, ...items));
  }

  // The server lists an answer's sources at its end ("Sources:" in the visitor's language,
  // then "[n] title" lines) and also apart, as `sources`: shown once, as the list.
  function withoutSources(text, list) {
    const titles = (Array.isArray(list) ? list : []).map((s) => String(s?.title ?? ""));
    const rows = text.trimEnd().split("\n");
    if (!titles.length || rows.length <= titles.length) return text;
    const tail = rows.slice(-titles.length).map((row) => row.trim().replace(/^\[\d+\]\s*/, ""));
    if (tail.some((title, i) => title !== titles[i])) return text;
    return rows.slice(0, -titles.length - 1).join("\n").trimEnd();
  }

  function finish(entry, text, list) {
    entry.text = withoutSources(String(text ?? entry.text), list);
    entry.final = true;
    entry.node.removeAttribute("aria-busy");
    entry.node.querySelector(".sources")?.remove();
    const refs = sources(list);
    if (refs) entry.node.append(refs);
    paint(entry, true);
  }

  // `before`: where a page of history goes (above what is shown); else at the bottom.
  // `content`: a text, or nodes (handoffNote's).
  function notice(content, before = null) {
    const body = content instanceof DocumentFragment ? content : String(content);
    add(el("div", { class: "msg notice", dir: "auto" }, body), before);
  }

  // A person's message: their name, the text (Markdown as nodes, like an answer), and when it
  // was machine-translated a "Translated" mark that opens the original (a native <details>:
  // keyboard and screen readers need nothing more).
  function agent(d, before = null) {
    const name = String(d.name || "");
    const node = el("div", { class: "msg agent", dir: "auto" });
    const who = el("span", { class: "who", dir: "auto", "aria-hidden": "true", text: name });
    node.append(label(name || say("human")), who,
      el("div", { class: "body" }, markdown(String(d.text ?? ""))));
    if (d.translated && d.original) {
      node.append(el("details", { class: "translated", dir: UI_DIR },
        el("summary", { text: say("translated") }),
        el("div", { class: "original", dir: "auto", "aria-label": say("original") },
          markdown(String(d.original)))));
    }
    add(node, before);
  }

  // The note a change of hands leaves in the conversation.
  function handoffNote(now, name) {
    if (now === "human" && name) return talkingWith(name);
    return say({ waiting: "waiting", human: "human" }[now] || "back");
  }

  // The agent's name in a <bdi>, isolated from the sentence around it: in the Arabic panel
  // "John Smith Jr." was drawn ".John Smith Jr" and "Eve :)" "): Eve", the name's last
  // neutral characters taking the sentence's direction.
  function talkingWith(name) {
    const [before, after = ""] = phrase("humanNamed").split("{name}");
    const out = page.fragment();
    out.append(before, el("bdi", { text: String(name) }), after);
    return out;
  }

  function showHandoff() {
    const { state: now, agent: name } = state.handoff;
    const text = now === "waiting" ? say("waiting")
      : now === "human" ? (name ? talkingWith(name) : say("human")) : "";
    ui.handoff.replaceChildren(text);
    ui.handoff.hidden = !text;
  }

  // ---- history ------------------------------------------------------------------------------
  let older = null;
  async function history(before = "") {
    const query = new URLSearchParams({ limit: "50" });
    if (before) query.set("before", before);
    let answer = await call(`/v1/history?${query}`);
    if (await renewAfter401(answer)) answer = await call(`/v1/history?${query}`);
    if (answer.status !== 200 || !Array.isArray(answer.data?.messages)) return;
    const messages = [...answer.data.messages];
    if (messages.length > 1 && String(messages[0].created_at) > String(messages.at(-1).created_at)) {
      messages.reverse();
    }
    // Above what is shown already: a message sent while this loaded stays below (it was
    // posted after this page was read, so it is not in it).
    const anchor = before ? older?.nextElementSibling || null : ui.log.firstElementChild;
    let lastUser = "";
    for (const m of messages) {
      if (m.role === "user") {
        lastUser = m.id;
        state.mine.add(String(m.id));
        state.shownById.add(String(m.id));
        add(userBubble(String(m.text ?? "")), anchor);
      } else if (m.role === "assistant" || m.role === "bot") {
        // An answer's events name the message it replies to; history lists it after it.
        const entry = reply(m.reply_to || lastUser || m.id, anchor);
        lastUser = "";
        finish(entry, m.text, m.sources);
        entry.recorded = true;
        state.unrecorded.delete(String(m.reply_to));
      } else if (m.role === "handoff") {
        // A change of hands, where it happened: its event, replayed after an earlier id than
        // this page's last, is not shown again.
        state.noticed.add(`handoff ${m.id}`);
        notice(handoffNote(m.state, m.name), anchor);
      } else if (m.role === "agent") {
        if (m.reply_to) state.noticed.add(`agent ${m.reply_to}`);
        agent(m, anchor);
      } else if (m.text) {
        state.noticed.add(noticeKey(m.notice_id, m.reply_to, m.text));
        // Its event may be an earlier release's, without an id (said before an upgrade,
        // replayed after it): matched as that release matched it.
        if (m.notice_id) state.noticed.add(noticeKey("", m.reply_to, m.text));
        state.unrecorded.delete(String(m.reply_to));
        notice(m.text, anchor);
      }
    }
    // The newest message still waits for its answer (a reload before its first word): "…",
    // as before the reload, until the answer's first event.
    if (!before && messages.at(-1)?.role === "user" && state.handoff.state === "bot") typing(true);
    showEarlier(answer.data.next);
  }

  function showEarlier(next) {
    // The button pressed goes: the keyboard's place goes to the next one, else to the log
    // (focus left on a removed node falls back to the page's start).
    const pressed = older !== null && shadow.activeElement === older;
    older?.remove();
    older = null;
    if (next) {
      older = el("button", { class: "earlier", type: "button", text: say("earlier") });
      older.addEventListener("click", () => history(String(next)).catch(() => {}));
      ui.log.prepend(older);
    }
    if (pressed) (older || ui.log).focus();
  }

  // ---- the event stream ---------------------------------------------------------------------
  function remember(id) {
    if (!id) return true;
    if (state.seen.has(id)) return false; // a replay after a reconnect
    state.seen.add(id);
    if (state.seen.size > 1000) state.seen.delete(state.seen.values().next().value);
    state.lastEventId = id;
    return true;
  }

  function unrecorded(replyTo, before) {
    if (!state.unrecorded.has(replyTo)) state.unrecorded.set(replyTo, before || "0-0");
    const oldest = state.unrecorded.keys().next().value;
    if (state.unrecorded.size > UNRECORDED_KEPT) state.unrecorded.delete(oldest);
  }

  // A notice as the history and its event both name it: by the id the server gave it (two
  // of the same text that name no message are two notices); an earlier release's, without
  // one, by the message it answers and its text.
  const noticeKey = (id, replyTo, text) => (id ? `notice ${id}` : `${replyTo || ""}\n${text}`);

  const HANDLERS = {
    // The visitor's message, sent from another tab or device (this tab's own are shown as
    // they are sent): above its answer when that came first.
    message(d) {
      const id = String(d.id ?? "");
      if (!id || state.mine.has(id)) return;
      state.mine.add(id);
      if (d.key && state.sentKeys.has(String(d.key))) return;
      const answer = state.replies.get(id);
      state.shownById.add(id);
      add(userBubble(String(d.text ?? "")), answer?.node || null);
      if (!answer) typing(state.handoff.state === "bot");
    },
    delta(d, before) {
      typing(false);
      const entry = reply(d.reply_to);
      if (entry.final) return;
      if (d.reply_to && !state.unfinished.has(d.reply_to)) state.unfinished.set(d.reply_to, before || "0-0");
      // An attempt at the answer starts again (a worker took over one that stopped, or the
      // event log was out of reach): what the earlier attempt showed goes.
      if (d.first === true) {
        entry.text = "";
        // One answer streams at a time in a conversation: another one still unfinished is
        // an attempt that was cut off, and this one answers its message too (messages that
        // waited together are answered together, as the newest).
        for (const [id, other] of state.replies) {
          if (id === d.reply_to || other.final) continue;
          cancelAnimationFrame(other.frame);
          other.node.remove();
          state.replies.delete(id);
          state.unfinished.delete(id);
        }
      }
      entry.text += String(d.text ?? "");
      paint(entry);
    },
    answer(d, before) {
      typing(false);
      const entry = reply(d.reply_to);
      const start = state.unfinished.get(d.reply_to) || before;
      if (d.reply_to && !entry.recorded) unrecorded(d.reply_to, start);
      state.unfinished.delete(d.reply_to);
      finish(entry, d.text, d.sources);
    },
    notice(d, before) {
      typing(false);
      const key = noticeKey(d.id, d.reply_to, d.text);
      // The history showed it (an id names one notice, however often its event is replayed).
      if (d.id ? state.noticed.has(key) : state.noticed.delete(key)) return;
      // One said outside any answer (a refusal) is in no history: nothing to resume from.
      if (d.reply_to && d.recorded !== false) unrecorded(d.reply_to, before);
      notice(d.text);
    },
    handoff(d) {
      const key = { waiting: "waiting", human: "human", bot: "back" }[d.state];
      if (!key) return;
      typing(false); // nobody answers automatically while a person is asked for or has it
      state.handoff = { state: d.state, agent: String(d.agent || "") };
      showHandoff();
      if (d.id && state.noticed.has(`handoff ${d.id}`)) return; // the history showed it
      notice(handoffNote(d.state, d.agent));
    },
    agent(d) {
      typing(false);
      if (state.noticed.delete(`agent ${d.reply_to}`)) return; // the history showed it
      agent(d);
    },
  };

  function listen() {
    state.stream?.close();
    const url = new URL(`${API}/v1/events`);
    url.searchParams.set("token", state.token);
    // Without an id the server sends only new events, and one appended before this
    // connection got there would be lost: a new visitor starts from the beginning instead.
    url.searchParams.set("last_event_id", state.lastEventId || "0-0");
    const stream = new EventSource(url);
    state.stream = stream;
    stream.onopen = () => {
      state.streamAttempt = 0;
      problem("stream", false);
    };
    // The browser's own retry cannot tell an expired token from a server that is down, and
    // stops for good on a 5xx: close, check the token with a light request, reopen after the
    // last event seen.
    stream.onerror = () => {
      stream.close();
      if (state.stream !== stream) return;
      clearTimeout(state.silence);
      problem("stream", true);
      clearTimeout(state.reconnect);
      state.reconnect = setTimeout(reopen, backoff(state.streamAttempt++));
    };
    watch(stream);
    stream.addEventListener("keep-alive", (event) => {
      try {
        const every = Number(JSON.parse(event.data).every_s);
        if (every > 0) state.keepaliveS = every;
      } catch {
        /* not ours to read: the interval stays */
      }
      watch(stream);
    });
    for (const [name, handle] of Object.entries(HANDLERS)) {
      stream.addEventListener(name, (event) => {
        watch(stream);
        const before = state.lastEventId;
        if (!remember(event.lastEventId)) return;
        let data;
        try {
          data = JSON.parse(event.data);
        } catch {
          return;
        }
        if (data && typeof data === "object") handle(data, before);
        persist();
      });
    }
  }

  // A stream silent for 2.5 keep-alive intervals was dropped without a word (a network gone, a
  // laptop that slept: EventSource may wait on it for good, and hides the server's comments):
  // it is opened again after the last event seen, as after an error.
  function watch(stream) {
    clearTimeout(state.silence);
    state.silence = setTimeout(() => stream.onerror(), state.keepaliveS * 2500);
  }
  // So too, at once, when the browser says it is back online; the banner says the server
  // cannot be reached only if that fails (as an error did, it flashed for the second the
  // reconnect took).
  page.on(window, "online", () => {
    const stream = state.stream;
    if (!stream || state.refused) return;
    stream.close();
    clearTimeout(state.silence);
    clearTimeout(state.reconnect);
    reopen();
  });

  async function reopen() {
    try {
      const answer = await call("/v1/history?limit=1");
      await renewAfter401(answer);
      listen();
    } catch (error) {
      if (error instanceof Refused) {
        state.refused = true;
        showState();
        return;
      }
      problem("stream", true);
      state.reconnect = setTimeout(reopen, backoff(state.streamAttempt++));
    }
  }

  function start() {
    state.starting ||= (async () => {
      for (let attempt = 0; ; attempt++) {
        try {
          await visitor();
          await history();
          // What an earlier page showed from its events and the history lacks (not yet
          // recorded): the stream replays it; what the history has is not shown twice.
          const from = state.unrecorded.values().next().value;
          if (from) state.lastEventId = from;
          persist();
          listen();
          problem("start", false);
          return;
        } catch (error) {
          if (error instanceof Refused) {
            state.refused = true; // the banner says so, and sending stops
            showState();
            throw error;
          }
          problem("start", true);
          await sleep(backoff(attempt));
        }
      }
    })();
    return state.starting;
  }

  // ---- sending ------------------------------------------------------------------------------
  function uuid() {
    if (crypto.randomUUID) return crypto.randomUUID();
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  // `key`: the same on every retry, and after a reload (the outbox): the server answers it once.
  // `after`: the send to wait for before posting. Each waits for the one before it
  // (state.sending), so that a message retried after a failed post does not reach the server
  // after the next one: the server records and answers them in the order they are shown.
  function send(text, key = uuid(), after = state.sending) {
    const bubble = add(userBubble(text));
    bubble.classList.add("pending");
    const status = el("span", { class: "status", text: say("sending") });
    bubble.append(status);
    state.sentKeys.add(key);
    if (!state.outbox.some((m) => m.key === key)) state.outbox.push({ key, text });
    persist();
    const sending = (async () => {
      try {
        await after;
        await deliver(text, key, bubble, status);
      } finally {
        state.outbox = state.outbox.filter((m) => m.key !== key);
        persist();
      }
    })();
    state.sending = sending;
    return sending;
  }

  async function deliver(text, key, bubble, status) {
    for (let attempt = 0; ; attempt++) {
      try {
        await start();
        let answer = await post(text, key);
        if (await renewAfter401(answer)) answer = await post(text, key);
        problem("send", false);
        if (answer.status === 202) {
          const id = String(answer.data?.message_id ?? "");
          if (state.shownById.has(id)) {
            bubble.remove(); // an earlier page's post landed: the history shows it already
            return;
          }
          if (id) state.mine.add(id);
          bubble.classList.remove("pending");
          status.remove();
          typing(state.handoff.state === "bot");
        } else if (answer.status === 429) {
          const wait = parseInt(answer.headers.get("Retry-After") || "", 10);
          state.rateUntil = Date.now() + (Number.isFinite(wait) ? wait : 30) * 1000;
          showState();
          bubble.remove();
          // Back in the box to send again; after what an earlier refusal put back there.
          ui.input.value = ui.input.value ? `${ui.input.value}\n${text}` : text;
        } else if (answer.status === 413) {
          // Over the server's limit: a message an earlier page left unsent, text a refusal put
          // back in the box (a script's value is not cut to maxlength), a limit lowered since
          // the box learnt it. Said so, and back in the box to be shortened.
          bubble.classList.replace("pending", "failed");
          status.textContent = state.maxChars ? say("tooLongAt", { n: state.maxChars })
            : say("tooLong");
          if (!ui.input.value) ui.input.value = text;
        } else {
          bubble.classList.replace("pending", "failed");
          status.textContent = say("notSent");
        }
        return;
      } catch (error) {
        if (!(error instanceof Unavailable)) {
          bubble.classList.replace("pending", "failed");
          status.textContent = say("notSent");
          return;
        }
        problem("send", true);
        await sleep(backoff(attempt));
      }
    }
  }

  function post(text, key) {
    return call("/v1/messages", { method: "POST", body: { text }, headers: { "Idempotency-Key": key } });
  }

  // ---- opening, closing, keys ---------------------------------------------------------------
  function open() {
    ui.panel.hidden = false;
    ui.root.classList.add("open");
    ui.launcher.setAttribute("aria-expanded", "true");
    ui.launcher.setAttribute("aria-label", say("close"));
    ui.input.focus();
    ui.log.scrollTop = ui.log.scrollHeight;
    start().catch(() => {}); // a refusal is on the banner
  }

  function close() {
    ui.panel.hidden = true;
    ui.root.classList.remove("open");
    ui.launcher.setAttribute("aria-expanded", "false");
    ui.launcher.setAttribute("aria-label", say("open"));
    ui.launcher.focus();
  }

  function grow() {
    ui.input.style.height = "auto";
    ui.input.style.height = `${Math.min(ui.input.scrollHeight + 2, 120)}px`;
  }

  ui.launcher.addEventListener("click", () => (ui.panel.hidden ? open() : close()));
  ui.close.addEventListener("click", close);
  ui.panel.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.preventDefault();
      close();
    }
  });
  ui.input.addEventListener("input", grow);
  ui.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      ui.form.requestSubmit();
    }
  });
  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = ui.input.value.trim();
    if (!text || ui.send.disabled) return;
    ui.input.value = "";
    grow();
    send(text);
  });

  showHandoff();
  const mount = () => {
    delete window[MOUNTING];
    page.body().append(host);
  };
  if (page.body()) mount();
  else {
    window[MOUNTING] = true;
    page.on(document, "DOMContentLoaded", mount, { once: true });
  }
  // A returning visitor's answers keep arriving while the panel is closed.
  if (state.token) start().catch(() => {});
  for (const { key, text } of [...state.outbox]) send(text, key);
})();
