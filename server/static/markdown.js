/**
 * Markdown → safe HTML for model output: markdown-it with raw HTML disabled, then DOMPurify.
 * Links: only http(s) and mailto, opened in a new tab with rel="noopener noreferrer".
 * Images are shown as links (the page's CSP allows no remote images, and a tracking pixel
 * in a model answer should not load by itself). Code blocks get a copy button and, when
 * they name a language highlight.js knows, syntax highlighting (token classes only, no inline
 * styles, so the strict CSP holds; no guessing of unnamed languages).
 */

import MarkdownIt from './vendor/markdown-it/markdown-it.esm.min.js';
import DOMPurify from './vendor/dompurify/purify.es.js';
import hljs from './vendor/highlight/highlight.min.js';

const SAFE_URL = /^(?:https?:\/\/|mailto:)/i;
/** Larger code blocks are shown without highlighting (it costs time linear in their size). */
const HIGHLIGHT_MAX_CHARS = 100_000;

const md = new MarkdownIt({ html: false, linkify: true, typographer: false, breaks: false });
const esc = md.utils.escapeHtml;

md.validateLink = (url) => SAFE_URL.test(url.trim());

md.renderer.rules.image = (tokens, idx) => {
  const t = tokens[idx];
  const src = t.attrGet('src') || '';
  const alt = t.content || 'image';
  if (!SAFE_URL.test(src)) return esc(alt);
  return `<a href="${esc(src)}" class="img-link">🖼 ${esc(alt)}</a>`;
};

let highlighting = true;
md.renderer.rules.fence = (tokens, idx) => {
  const t = tokens[idx];
  const lang = (t.info || '').trim().split(/\s+/)[0].replace(/[^\w+#.-]/g, '').slice(0, 24);
  const cls = lang ? ` class="language-${esc(lang)}"` : '';
  let body = null;
  if (highlighting && lang && t.content.length <= HIGHLIGHT_MAX_CHARS && hljs.getLanguage(lang)) {
    try {
      body = hljs.highlight(t.content, { language: lang, ignoreIllegals: true }).value;
    } catch { body = null; /* shown plain */ }
  }
  return '<div class="code-block"><div class="code-head">'
    + `<span class="code-lang">${esc(lang || 'text')}</span>`
    + '<button type="button" class="copy-code" aria-label="Copy code">Copy</button></div>'
    + `<pre><code${cls}>${body ?? esc(t.content)}</code></pre></div>\n`;
};

DOMPurify.addHook('afterSanitizeAttributes', (node) => {
  if (node.tagName === 'A') {
    const href = node.getAttribute('href');
    if (href && SAFE_URL.test(href.trim())) {
      node.setAttribute('target', '_blank');
      node.setAttribute('rel', 'noopener noreferrer');
    } else {
      node.removeAttribute('href');
    }
  }
});

const PURIFY = {
  ALLOWED_URI_REGEXP: /^(?:https?:|mailto:)/i,
  FORBID_TAGS: ['style', 'form', 'input', 'textarea', 'select', 'option', 'img', 'svg', 'math',
    'iframe', 'object', 'embed', 'video', 'audio', 'source', 'link', 'meta', 'base'],
  FORBID_ATTR: ['style', 'srcset', 'action', 'formaction', 'xlink:href'],
  ALLOW_DATA_ATTR: false,
};

/**
 * @param {string} text markdown
 * @param {{highlight?: boolean}} [opts] highlight code blocks (default true)
 * @returns {string} sanitized HTML
 */
export function renderMarkdown(text, { highlight = true } = {}) {
  highlighting = highlight;
  try {
    return DOMPurify.sanitize(md.render(text || ''), PURIFY);
  } finally {
    highlighting = true;
  }
}
