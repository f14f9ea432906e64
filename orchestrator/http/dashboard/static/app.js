// The dashboard's only script of its own: the CSRF header on every htmx request (the server
// refuses a cookie-authenticated POST without it), and "/" to focus the search box.
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
})();
