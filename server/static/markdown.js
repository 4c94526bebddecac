/**
 * Markdown → safe HTML for model output: markdown-it with raw HTML disabled, then DOMPurify.
 * Links: only http(s) and mailto, opened in a new tab with rel="noopener noreferrer".
 * Images are shown as links (the page's CSP allows no remote images, and a tracking pixel
 * in a model answer should not load by itself). Code blocks get a copy button.
 */

import MarkdownIt from './vendor/markdown-it/markdown-it.esm.min.js';
import DOMPurify from './vendor/dompurify/purify.es.js';

const SAFE_URL = /^(?:https?:\/\/|mailto:)/i;

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

md.renderer.rules.fence = (tokens, idx) => {
  const t = tokens[idx];
  const lang = (t.info || '').trim().split(/\s+/)[0].replace(/[^\w+#.-]/g, '').slice(0, 24);
  const cls = lang ? ` class="language-${esc(lang)}"` : '';
  return '<div class="code-block"><div class="code-head">'
    + `<span class="code-lang">${esc(lang || 'text')}</span>`
    + '<button type="button" class="copy-code" aria-label="Copy code">Copy</button></div>'
    + `<pre><code${cls}>${esc(t.content)}</code></pre></div>\n`;
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
 * @returns {string} sanitized HTML
 */
export function renderMarkdown(text) {
  return DOMPurify.sanitize(md.render(text || ''), PURIFY);
}
