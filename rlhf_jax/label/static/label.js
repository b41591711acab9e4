// Task page: rank completions by keyboard (focus one, press 1..9, F to flag, 0 to clear,
// arrows to move focus, Alt+arrows to move it) or by drag-and-drop (ranks follow the order).
// The <select> in each completion is what the form submits; this script only fills it in.
(function () {
  "use strict";
  var list = document.getElementById("completions");
  var form = document.getElementById("rank-form");
  if (!list || !form) { return; }

  function items() { return Array.prototype.slice.call(list.querySelectorAll("li.completion")); }
  function select(li) { return li.querySelector("select"); }

  function refresh() {
    items().forEach(function (li) {
      var v = select(li).value;
      li.classList.toggle("flagged", v === "F");
      li.classList.toggle("ranked", v !== "" && v !== "F");
    });
  }

  // Ranks follow the on-screen order (best first); flagged completions keep their F.
  function ranksFromOrder() {
    var r = 0;
    items().forEach(function (li) {
      var s = select(li);
      if (s.value !== "F") { r += 1; s.value = String(r); }
    });
    refresh();
  }

  list.addEventListener("keydown", function (ev) {
    var li = ev.target.closest ? ev.target.closest("li.completion") : null;
    if (!li || ev.target !== li) { return; }  // keys inside the <select> keep their meaning
    var all = items(), i = all.indexOf(li), n = all.length, key = ev.key;
    if (/^[1-9]$/.test(key) && Number(key) <= n) {
      select(li).value = key;
    } else if (key === "f" || key === "F") {
      select(li).value = "F";
    } else if (key === "0" || key === "Backspace" || key === "Delete") {
      select(li).value = "";
    } else if ((key === "ArrowDown" || key === "ArrowUp") && ev.altKey) {
      var j = key === "ArrowDown" ? i + 1 : i - 1;
      if (j < 0 || j >= n) { return; }
      list.insertBefore(li, key === "ArrowDown" ? all[j].nextSibling : all[j]);
      li.focus();
      ranksFromOrder();
    } else if (key === "ArrowDown" && i + 1 < n) {
      all[i + 1].focus();
    } else if (key === "ArrowUp" && i > 0) {
      all[i - 1].focus();
    } else {
      return;
    }
    ev.preventDefault();
    refresh();
  });

  list.addEventListener("change", refresh);

  var dragged = null;
  list.addEventListener("dragstart", function (ev) {
    dragged = ev.target.closest("li.completion");
    if (!dragged) { return; }
    dragged.classList.add("dragging");
    ev.dataTransfer.effectAllowed = "move";
    ev.dataTransfer.setData("text/plain", dragged.dataset.pos);
  });
  list.addEventListener("dragover", function (ev) {
    var over = ev.target.closest ? ev.target.closest("li.completion") : null;
    if (!dragged || !over || over === dragged) { if (dragged) { ev.preventDefault(); } return; }
    ev.preventDefault();
    var box = over.getBoundingClientRect();
    var after = ev.clientY > box.top + box.height / 2;
    list.insertBefore(dragged, after ? over.nextSibling : over);
  });
  list.addEventListener("drop", function (ev) { if (dragged) { ev.preventDefault(); } });
  list.addEventListener("dragend", function () {
    if (!dragged) { return; }
    dragged.classList.remove("dragging");
    dragged = null;
    ranksFromOrder();
  });

  form.addEventListener("submit", function (ev) {
    if (ev.submitter && ev.submitter.value === "skip") { return; }
    var missing = items().filter(function (li) { return select(li).value === ""; });
    if (missing.length) {
      ev.preventDefault();
      missing[0].focus();
      var note = document.getElementById("client-error") || document.createElement("p");
      note.id = "client-error";
      note.className = "error";
      note.textContent = "Give every completion a rank or flag it F (" + missing.length + " left).";
      form.insertBefore(note, form.firstChild);
    }
  });

  refresh();
  if (items().length) { items()[0].focus(); }
})();
