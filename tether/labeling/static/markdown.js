/*
 * TetherMarkdown: renders a small, safe Markdown subset straight into DOM nodes.
 *
 * Prompts and responses are untrusted model output, so this file never parses HTML:
 * every piece of text reaches the page through createTextNode / textContent, and the
 * only attribute ever taken from the input is a link's href, which must parse as an
 * absolute http:, https: or mailto: URL. Raw HTML in the input therefore shows up as
 * the literal characters the model wrote.
 *
 * Supported: paragraphs (blank-line separated) with line breaks, # .. ### headings,
 * fenced code blocks (``` or ~~~), > block quotes, - / * / + bullet lists and 1. / 1)
 * numbered lists (nested by indentation), --- rules, inline `code`, **bold**, __bold__,
 * *italic*, _italic_, backslash escapes, [text](url) links, and GitHub-style tables (a header
 * row, a delimiter row such as | --- | :-: | --: |, then body rows; \| is a literal pipe).
 * Table cells are inline text like any other, and alignment is a class, never a style.
 *
 * API: window.TetherMarkdown.render(text) -> DocumentFragment
 */
(function () {
  "use strict";

  var SAFE_PROTOCOLS = { "http:": true, "https:": true, "mailto:": true };
  var ESCAPABLE = "\\`*_{}[]()#+-.!>~|<\"'";
  // Nesting deeper than this (lists in quotes in lists ...) is rendered as plain text, so
  // adversarial input cannot blow the stack.
  var MAX_DEPTH = 12;
  // Links longer than these are not links; bounds the bracket scan on pathological input.
  var MAX_LINK_TEXT = 1000;
  var MAX_LINK_URL = 2048;
  // Wider tables are cut to this many columns (bounds the work on a line of pipes).
  var MAX_TABLE_COLUMNS = 64;

  var BLANK_RE = /^\s*$/;
  var FENCE_RE = /^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)[^`]*$/;
  var HEADING_RE = /^ {0,3}(#{1,3})(?:[ \t]+(.*?))?[ \t]*$/;
  var HR_RE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
  var QUOTE_RE = /^ {0,3}> ?(.*)$/;
  var LIST_RE = /^([ \t]*)([-*+]|\d{1,9}[.)])([ \t]+|$)(.*)$/;
  var TABLE_DELIMITER_CELL_RE = /^:?-+:?$/;

  function el(tag) {
    return document.createElement(tag);
  }

  function text(s) {
    return document.createTextNode(s);
  }

  /*
   * Returns a normalised href if `raw` is an absolute http(s)/mailto URL, else null.
   * Leading/trailing whitespace and control characters are stripped, and tabs/newlines
   * removed everywhere, because browsers' URL parser drops them too ("java\tscript:" is
   * javascript:). The decision is then made by the same URL parser the browser uses, and
   * the parser's own serialisation is what goes into the href.
   */
  function safeHref(raw) {
    // eslint-disable-next-line no-control-regex
    var cleaned = String(raw)
      .replace(/^[\u0000-\u0020\u007f-\u009f]+|[\u0000-\u0020\u007f-\u009f]+$/g, "")
      .replace(/[\t\n\r]/g, "");
    var scheme = /^([a-z][a-z0-9+.\-]*):/i.exec(cleaned);
    if (!scheme || !SAFE_PROTOCOLS[scheme[1].toLowerCase() + ":"]) return null;
    var url;
    try {
      url = new URL(cleaned); // no base: relative URLs throw and are rejected
    } catch (e) {
      return null;
    }
    return SAFE_PROTOCOLS[url.protocol] ? url.href : null;
  }

  // ---------------------------------------------------------------- inline level

  function isSpace(c) {
    return c === "" || /\s/.test(c);
  }

  function isWordChar(c) {
    return c !== "" && /[0-9A-Za-z\u00C0-\uFFFF]/.test(c);
  }

  /*
   * Parses [label](destination) starting at text[i] === "[". Returns null when it is not
   * a well-formed link (the "[" is then ordinary text), else {label, href, end} where href
   * is null for a link whose URL is not allowed (shown as literal text).
   */
  function parseLink(s, i) {
    var depth = 0;
    var j;
    var limit = Math.min(s.length, i + MAX_LINK_TEXT);
    for (j = i; j < limit; j++) {
      var c = s.charAt(j);
      if (c === "\\") {
        j++;
      } else if (c === "[") {
        depth++;
      } else if (c === "]") {
        depth--;
        if (depth === 0) break;
      }
    }
    if (j >= limit || s.charAt(j) !== "]" || s.charAt(j + 1) !== "(") return null;
    var labelEnd = j;
    var k;
    var parens = 1;
    limit = Math.min(s.length, j + 2 + MAX_LINK_URL);
    for (k = j + 2; k < limit; k++) {
      var d = s.charAt(k);
      if (d === "\\") {
        k++;
      } else if (d === "(") {
        parens++;
      } else if (d === ")") {
        parens--;
        if (parens === 0) break;
      } else if (d === "\n") {
        return null;
      }
    }
    if (parens !== 0 || k >= limit) return null;
    var dest = s.slice(j + 2, k).trim();
    // [t](url "title"): the title is dropped (we never set title attributes from input).
    var titled = /^(\S+)\s+("[^"]*"|'[^']*'|\([^)]*\))$/.exec(dest);
    if (titled) dest = titled[1];
    if (dest.charAt(0) === "<" && dest.charAt(dest.length - 1) === ">") dest = dest.slice(1, -1);
    return { label: s.slice(i + 1, labelEnd), href: dest ? safeHref(dest) : null, end: k + 1 };
  }

  /*
   * Finds the closing delimiter for emphasis opened at `from` (just after the opener).
   * The closer must follow a non-space character; "_" closers must not be followed by a
   * word character (so snake_case_names stay as they are). Single-character delimiters
   * skip doubled ones, so "*a **b** c*" closes at the last "*".
   */
  function findCloser(s, from, delim) {
    var ch = delim.charAt(0);
    var j = s.indexOf(delim, from);
    while (j !== -1) {
      var before = s.charAt(j - 1);
      var after = s.charAt(j + delim.length);
      var doubled = delim.length === 1 && (after === ch || before === ch);
      if (doubled) {
        // step over the whole run of this character
        var end = j;
        while (s.charAt(end) === ch) end++;
        j = s.indexOf(delim, end);
        continue;
      }
      if (j > from && !isSpace(before) && !(ch === "_" && isWordChar(after))) return j;
      j = s.indexOf(delim, j + 1);
    }
    return -1;
  }

  /* Appends inline-formatted `s` to `parent`. `inLink` disables links inside link text. */
  function renderInline(s, parent, inLink, depth) {
    if (depth > MAX_DEPTH) {
      parent.appendChild(text(s));
      return;
    }
    var buf = "";
    var n = s.length;
    var i = 0;
    // Delimiters known to have no closer further on; skip re-scanning (keeps long
    // inputs full of stray "*" linear instead of quadratic).
    var noCloser = {};

    function flush() {
      if (buf) {
        parent.appendChild(text(buf));
        buf = "";
      }
    }

    while (i < n) {
      var c = s.charAt(i);

      if (c === "\\" && i + 1 < n && ESCAPABLE.indexOf(s.charAt(i + 1)) !== -1) {
        buf += s.charAt(i + 1);
        i += 2;
        continue;
      }

      if (c === "\n") {
        flush();
        parent.appendChild(el("br"));
        i++;
        continue;
      }

      if (c === "`") {
        var run = 1;
        while (s.charAt(i + run) === "`") run++;
        var fence = s.substr(i, run);
        var close = noCloser[fence] ? -1 : s.indexOf(fence, i + run);
        // the closing run must be exactly as long as the opening one
        while (close !== -1 && s.charAt(close + run) === "`") {
          var e = close;
          while (s.charAt(e) === "`") e++;
          close = s.indexOf(fence, e);
        }
        if (close === -1) {
          noCloser[fence] = true;
          buf += fence;
          i += run;
          continue;
        }
        flush();
        var code = el("code");
        var content = s.slice(i + run, close).replace(/\n/g, " ");
        if (/^ .*[^ ].* $/.test(content)) content = content.slice(1, -1);
        code.textContent = content;
        parent.appendChild(code);
        i = close + run;
        continue;
      }

      if (c === "[" && !inLink) {
        var link = parseLink(s, i);
        if (link) {
          if (link.href) {
            flush();
            var a = el("a");
            a.href = link.href;
            a.rel = "noopener noreferrer nofollow";
            a.target = "_blank";
            if (link.label) renderInline(link.label, a, true, depth + 1);
            else a.textContent = link.href;
            parent.appendChild(a);
          } else {
            // Disallowed scheme (javascript:, data:, relative ...): show exactly what was written.
            buf += s.slice(i, link.end);
          }
          i = link.end;
          continue;
        }
      }

      if (c === "*" || c === "_") {
        var len = 1;
        while (s.charAt(i + len) === c) len++;
        var prev = s.charAt(i - 1);
        var next = s.charAt(i + len);
        // An opener must be followed by non-space; "_" must also not sit inside a word.
        var canOpen = !isSpace(next) && !(c === "_" && isWordChar(prev));
        if (canOpen && len <= 3) {
          var delim = s.substr(i, len);
          var closeAt = noCloser[delim] ? -1 : findCloser(s, i + len, delim);
          if (closeAt === -1) {
            noCloser[delim] = true;
          } else {
            flush();
            var inner = s.slice(i + len, closeAt);
            var node;
            if (len === 3) {
              node = el("strong");
              var em = el("em");
              renderInline(inner, em, inLink, depth + 1);
              node.appendChild(em);
            } else {
              node = el(len === 2 ? "strong" : "em");
              renderInline(inner, node, inLink, depth + 1);
            }
            parent.appendChild(node);
            i = closeAt + len;
            continue;
          }
        }
        buf += s.substr(i, len);
        i += len;
        continue;
      }

      buf += c;
      i++;
    }
    flush();
  }

  // ---------------------------------------------------------------- block level

  function indentWidth(ws) {
    var w = 0;
    for (var i = 0; i < ws.length; i++) w += ws.charAt(i) === "\t" ? 4 - (w % 4) : 1;
    return w;
  }

  /* Removes up to `width` columns of leading indentation. */
  function dedent(line, width) {
    var i = 0;
    var w = 0;
    while (i < line.length && w < width) {
      var c = line.charAt(i);
      if (c === " ") w += 1;
      else if (c === "\t") w += 4 - (w % 4);
      else break;
      i++;
    }
    return line.slice(i);
  }

  // ---------------------------------------------------------------- tables

  /* A table row's cells: split at pipes not escaped by a backslash, outer pipes dropped. */
  function tableCells(line) {
    var s = line.trim();
    if (s.charAt(0) === "|") s = s.slice(1);
    if (s.charAt(s.length - 1) === "|" && s.charAt(s.length - 2) !== "\\") s = s.slice(0, -1);
    var cells = [];
    var cell = "";
    for (var i = 0; i < s.length && cells.length < MAX_TABLE_COLUMNS; i++) {
      var c = s.charAt(i);
      if (c === "\\" && i + 1 < s.length) {
        cell += c + s.charAt(i + 1);
        i++;
      } else if (c === "|") {
        cells.push(cell.trim());
        cell = "";
      } else {
        cell += c;
      }
    }
    if (cells.length < MAX_TABLE_COLUMNS) cells.push(cell.trim());
    return cells;
  }

  /* The alignments of a delimiter row (| --- | :-: |), or null if `line` is not one. */
  function tableAlignments(line) {
    if (line.indexOf("-") === -1 || !/^[\s|:\-]+$/.test(line)) return null;
    var cells = tableCells(line);
    var aligns = [];
    for (var i = 0; i < cells.length; i++) {
      if (!TABLE_DELIMITER_CELL_RE.test(cells[i])) return null;
      var left = cells[i].charAt(0) === ":";
      var right = cells[i].charAt(cells[i].length - 1) === ":";
      aligns.push(left && right ? "center" : right ? "right" : "");
    }
    return aligns;
  }

  /* Whether lines[i] is a table's header row: it has a pipe, and the next line is a delimiter
     row with as many cells. */
  function startsTable(lines, i) {
    if (i + 1 >= lines.length || lines[i].indexOf("|") === -1) return false;
    var aligns = tableAlignments(lines[i + 1]);
    return aligns !== null && aligns.length === tableCells(lines[i]).length;
  }

  /* Renders the table starting at lines[start]; returns the index of the first line after it. */
  function parseTable(lines, start, parent, depth) {
    var aligns = tableAlignments(lines[start + 1]);
    var table = el("table");
    function row(line, tag) {
      var tr = el("tr");
      var cells = tableCells(line);
      // as in GitHub's tables: every row has the header's columns, missing cells empty
      for (var c = 0; c < aligns.length; c++) {
        var cell = el(tag);
        if (aligns[c]) cell.className = "align-" + aligns[c];
        renderInline(cells[c] || "", cell, false, depth + 1);
        tr.appendChild(cell);
      }
      return tr;
    }
    var thead = el("thead");
    thead.appendChild(row(lines[start], "th"));
    table.appendChild(thead);
    var tbody = el("tbody");
    var i = start + 2;
    while (i < lines.length && !BLANK_RE.test(lines[i]) && !startsBlock(lines[i])) {
      tbody.appendChild(row(lines[i], "td"));
      i++;
    }
    if (tbody.firstChild) table.appendChild(tbody);
    var wrap = el("div");
    wrap.className = "table-wrap";
    wrap.appendChild(table);
    parent.appendChild(wrap);
    return i;
  }

  /* Whether `line` starts a block that may interrupt a paragraph. */
  function startsBlock(line) {
    if (FENCE_RE.test(line) || HR_RE.test(line) || QUOTE_RE.test(line)) return true;
    var hm = HEADING_RE.exec(line);
    if (hm) return true;
    var lm = LIST_RE.exec(line);
    // As in CommonMark, only an empty-free item can interrupt, and a numbered list only
    // when it starts at 1 (so "2019. A good year" inside a paragraph stays text).
    if (lm && lm[4].trim() !== "") return !/\d/.test(lm[2]) || parseInt(lm[2], 10) === 1;
    return false;
  }

  function parseBlocks(lines, parent, depth) {
    if (depth > MAX_DEPTH) {
      var p = el("p");
      p.textContent = lines.join("\n");
      parent.appendChild(p);
      return;
    }
    var i = 0;
    while (i < lines.length) {
      var line = lines[i];

      if (BLANK_RE.test(line)) {
        i++;
        continue;
      }

      var fm = FENCE_RE.exec(line);
      if (fm) {
        var marker = fm[1];
        var closeRe = new RegExp("^ {0,3}" + (marker.charAt(0) === "`" ? "`" : "~") + "{" + marker.length + ",}\\s*$");
        var body = [];
        i++;
        while (i < lines.length && !closeRe.test(lines[i])) {
          body.push(lines[i]);
          i++;
        }
        i++; // skip the closing fence (or run off the end: an unclosed fence runs to the end)
        var pre = el("pre");
        var code = el("code");
        var lang = fm[2].replace(/[^\w+#.\-]/g, "").slice(0, 30);
        if (lang) code.setAttribute("data-lang", lang);
        code.textContent = body.join("\n");
        pre.appendChild(code);
        parent.appendChild(pre);
        continue;
      }

      var hm = HEADING_RE.exec(line);
      if (hm) {
        var hnode = el("h" + hm[1].length);
        var title = (hm[2] || "").replace(/[ \t]+#+[ \t]*$/, "").replace(/^#+$/, "");
        renderInline(title, hnode, false, depth);
        parent.appendChild(hnode);
        i++;
        continue;
      }

      if (HR_RE.test(line)) {
        parent.appendChild(el("hr"));
        i++;
        continue;
      }

      if (QUOTE_RE.test(line)) {
        var quoted = [];
        while (i < lines.length && !BLANK_RE.test(lines[i])) {
          var qm = QUOTE_RE.exec(lines[i]);
          if (qm) quoted.push(qm[1]);
          else if (startsBlock(lines[i])) break;
          else quoted.push(lines[i]); // lazy continuation
          i++;
        }
        var bq = el("blockquote");
        parseBlocks(quoted, bq, depth + 1);
        parent.appendChild(bq);
        continue;
      }

      if (LIST_RE.test(line)) {
        i = parseList(lines, i, parent, depth);
        continue;
      }

      if (startsTable(lines, i)) {
        i = parseTable(lines, i, parent, depth);
        continue;
      }

      // Paragraph: runs until a blank line or a block that may interrupt it (a table too).
      var para = [line.replace(/^\s+/, "")];
      i++;
      while (i < lines.length && !BLANK_RE.test(lines[i]) && !startsBlock(lines[i]) &&
             !startsTable(lines, i)) {
        para.push(lines[i].replace(/^\s+/, ""));
        i++;
      }
      var pnode = el("p");
      renderInline(para.join("\n").replace(/\s+$/, ""), pnode, false, depth);
      parent.appendChild(pnode);
    }
  }

  /* Parses a list starting at lines[start]; returns the index of the first line after it. */
  function parseList(lines, start, parent, depth) {
    var first = LIST_RE.exec(lines[start]);
    var baseIndent = indentWidth(first[1]);
    var ordered = /\d/.test(first[2]);
    var bulletChar = ordered ? first[2].slice(-1) : first[2];
    var list = el(ordered ? "ol" : "ul");
    if (ordered) {
      var startNum = parseInt(first[2], 10);
      if (startNum !== 1) list.setAttribute("start", String(startNum));
    }

    var items = []; // each: {lines: [...], contentIndent: n}
    var current = null;
    var loose = false;
    var i = start;

    function sameList(m) {
      if (!m || indentWidth(m[1]) > baseIndent + 1) return false;
      var isOrd = /\d/.test(m[2]);
      return isOrd === ordered && (ordered ? m[2].slice(-1) : m[2]) === bulletChar;
    }

    while (i < lines.length) {
      var line = lines[i];
      var m = LIST_RE.exec(line);
      if (sameList(m)) {
        current = {
          lines: [m[4]],
          contentIndent: indentWidth(m[1]) + m[2].length + Math.max(1, Math.min(indentWidth(m[3]), 4)),
        };
        items.push(current);
        i++;
        continue;
      }
      if (m && indentWidth(m[1]) <= baseIndent + 1) break; // a different kind of list at this level

      if (BLANK_RE.test(line)) {
        // A blank line continues the list only if an indented line or a sibling item follows.
        var j = i + 1;
        while (j < lines.length && BLANK_RE.test(lines[j])) j++;
        if (j >= lines.length) break;
        var nextIndent = indentWidth(/^[ \t]*/.exec(lines[j])[0]);
        if (sameList(LIST_RE.exec(lines[j])) || nextIndent >= current.contentIndent) {
          if (sameList(LIST_RE.exec(lines[j]))) loose = true;
          current.lines.push("");
          i++;
          continue;
        }
        break;
      }

      var indent = indentWidth(/^[ \t]*/.exec(line)[0]);
      if (indent > baseIndent) {
        current.lines.push(dedent(line, current.contentIndent));
        i++;
        continue;
      }
      // Lazy continuation of the item's paragraph.
      if (!startsBlock(line) && current.lines[current.lines.length - 1] !== "") {
        current.lines.push(line.replace(/^\s+/, ""));
        i++;
        continue;
      }
      break;
    }

    for (var k = 0; k < items.length; k++) {
      var li = el("li");
      var itemLines = items[k].lines;
      while (itemLines.length && BLANK_RE.test(itemLines[itemLines.length - 1])) itemLines.pop();
      var hasBlank = itemLines.some(function (l) { return BLANK_RE.test(l); });
      if (!loose && !hasBlank) {
        // Tight item: leading text goes straight into the <li> (no <p>), nested blocks after.
        var t = 0;
        while (t < itemLines.length && (t === 0 || !startsBlock(itemLines[t]))) t++;
        if (t > 0 && !startsBlock(itemLines[0])) {
          renderInline(itemLines.slice(0, t).join("\n"), li, false, depth + 1);
          parseBlocks(itemLines.slice(t), li, depth + 1);
        } else {
          parseBlocks(itemLines, li, depth + 1);
        }
      } else {
        parseBlocks(itemLines, li, depth + 1);
      }
      list.appendChild(li);
    }
    parent.appendChild(list);
    return i;
  }

  function render(input) {
    var frag = document.createDocumentFragment();
    if (input == null) return frag;
    var src = String(input).replace(/\r\n?/g, "\n").replace(/\u0000/g, "\uFFFD");
    parseBlocks(src.split("\n"), frag, 0);
    return frag;
  }

  window.TetherMarkdown = Object.freeze({ render: render, safeHref: safeHref });
})();
