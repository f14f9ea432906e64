// The dashboard's only script of its own: the CSRF header on every htmx request (the server
// refuses a cookie-authenticated POST without it), "/" to focus the search box, and filter forms
// that leave empty fields out of the URL (short deep links).
(function () {
  "use strict";
  function csrfToken() {
    var m = document.cookie.match(/(?:^|;\s*)wf_csrf=([^;]*)/);
    return m ? decodeURIComponent(m[1]) : "";
  }
  document.addEventListener("htmx:configRequest", function (evt) {
    evt.detail.headers["X-WF-CSRF"] = csrfToken();
  });
  document.addEventListener("keydown", function (evt) {
    if (evt.key !== "/" || evt.ctrlKey || evt.metaKey || evt.altKey) return;
    var t = evt.target;
    if (t && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName))) return;
    var box = document.getElementById("search");
    if (box) { evt.preventDefault(); box.focus(); box.select(); }
  });
  document.addEventListener("submit", function (evt) {
    var form = evt.target;
    if (!form || form.method !== "get") return;
    Array.prototype.forEach.call(form.elements, function (el) {
      if (el.name && el.value === "") el.disabled = true;
    });
    // Back to this page from the next one: the fields must be usable again.
    setTimeout(function () {
      Array.prototype.forEach.call(form.elements, function (el) { el.disabled = false; });
    }, 0);
  });
})();
