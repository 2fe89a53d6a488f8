// Settings page: keep each connection's status block live, and send the forms without a reload.
// Without JavaScript the forms post and redirect back, so nothing here is required.
(function () {
  "use strict";

  var root = document.querySelector("[data-status-url]");
  if (!root) return;

  var statusUrl = root.getAttribute("data-status-url");
  var busy = root.getAttribute("data-busy") === "true";
  var timer = null;

  // Poll every second while a sync is queued or running, every two seconds otherwise, and
  // rarely while the tab is hidden (nobody is looking; catch up as soon as it is shown).
  function delay() {
    if (document.hidden) return 30000;
    return busy ? 1000 : 2000;
  }

  function schedule(ms) {
    window.clearTimeout(timer);
    timer = window.setTimeout(poll, ms === undefined ? delay() : ms);
  }

  function replaceStatus(id, html) {
    var block = document.getElementById("status-" + id);
    if (block && block.innerHTML !== html) block.innerHTML = html;
  }

  // "Scheduled syncs are paused: ..." appears and goes away with the engine's state.
  var banner = document.querySelector("[data-engine-banner]");

  function updateBanner(text) {
    if (!banner) return;
    banner.hidden = !text;
    var body = banner.querySelector(".engine-banner-text");
    if (text && body.textContent !== text) body.textContent = text;
  }

  // Responses can arrive out of order (a poll racing a form's answer): only the newest counts.
  var issued = 0;
  var applied = 0;

  function poll() {
    var seq = ++issued;
    fetch(statusUrl, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok) throw new Error("status " + response.status);
        return response.json();
      })
      .then(function (data) {
        if (seq < applied) return;
        applied = seq;
        Object.keys(data.rows).forEach(function (id) { replaceStatus(id, data.rows[id]); });
        updateBanner(data.banner);
        busy = data.busy;
      })
      .catch(function () { /* offline or signed out: try again later */ })
      .then(function () { schedule(); });
  }

  document.addEventListener("visibilitychange", function () {
    schedule(document.hidden ? undefined : 0);
  });

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.hasAttribute("data-async")) return;
    event.preventDefault();
    var card = form.closest(".connection");
    var message = card.querySelector(".row-message");
    var buttons = form.querySelectorAll("button");
    buttons.forEach(function (b) { b.disabled = true; });
    fetch(form.action, {
      method: "POST",
      body: new FormData(form),
      headers: { Accept: "application/json" },
      credentials: "same-origin",
    })
      .then(function (response) {
        var type = response.headers.get("Content-Type") || "";
        if (type.indexOf("application/json") === -1) {
          // Signed out (redirected to the sign-in page) or refused by CSRF protection.
          throw new Error(response.redirected || response.status === 403 ? "session" : "network");
        }
        return response.json();
      })
      .then(function (data) {
        var seq = ++issued;
        applied = seq;
        message.textContent = data.message;
        message.className = "row-message message-" + data.level;
        card.querySelector(".status").innerHTML = data.status_html;
        busy = busy || data.busy;
      })
      .catch(function (error) {
        message.textContent = error.message === "session"
          ? "Your session has ended; reload the page to sign in again."
          : "Could not reach AdSync; please try again.";
        message.className = "row-message message-error";
      })
      .then(function () {
        buttons.forEach(function (b) { b.disabled = false; });
        schedule(busy ? 500 : undefined);
      });
  });

  schedule();
})();
