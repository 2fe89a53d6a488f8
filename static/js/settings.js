// Settings page: keep each connection's status block live, send the forms without a reload, and
// show times in the browser's time zone. Without JavaScript the forms post and redirect back and
// times read in UTC, so nothing here is required.
(function () {
  "use strict";

  // --- the viewer's time zone: the server renders exact times in it from this cookie ---------------
  var zone = "";
  try { zone = Intl.DateTimeFormat().resolvedOptions().timeZone || ""; } catch (e) { zone = ""; }
  var zoneChanged = false;
  if (/^[A-Za-z0-9_+\-\/]+$/.test(zone)) {
    var current = (document.cookie.match(/(?:^|; )tz=([^;]*)/) || [])[1];
    if (current !== zone) {
      document.cookie = "tz=" + zone + "; path=/; max-age=31536000; samesite=lax";
      zoneChanged = true;  // the first poll brings the exact times in this zone
    }
    document.querySelectorAll("[data-zone-name]").forEach(function (el) { el.textContent = zone; });
  }

  var root = document.querySelector("[data-status-url]");
  var statusUrl = root ? root.getAttribute("data-status-url") : null;
  var busy = root ? root.getAttribute("data-busy") === "true" : false;
  var timer = null;
  var etag = null;
  // The server's clock less ours, so "12 s ago" counts from the server's idea of now.
  var skew = root && root.getAttribute("data-now") ? Date.parse(root.getAttribute("data-now")) - Date.now() : 0;

  // --- relative times, counted here so that the poll only has to send what changed -----------------
  // The same words as connections/status.py relative_time.
  function relative(moment, now, next) {
    var seconds = (now - moment) / 1000;
    var future = seconds < 0;
    if (next && !future) return "due now";
    seconds = Math.abs(seconds);
    if (seconds < 10 && !future) return "just now";
    var text;
    if (seconds < 60) text = Math.floor(seconds) + " s";
    else if (seconds < 3600) text = Math.floor(seconds / 60) + " min";
    else if (seconds < 86400) text = Math.floor(seconds / 3600) + " h";
    else { var days = Math.floor(seconds / 86400); text = days + (days === 1 ? " day" : " days"); }
    return future ? "in " + text : text + " ago";
  }

  function tickTimes() {
    var now = Date.now() + skew;
    document.querySelectorAll(".status time[datetime]").forEach(function (el) {
      var text = relative(Date.parse(el.getAttribute("datetime")), now, el.hasAttribute("data-next"));
      if (el.textContent !== text) el.textContent = text;
    });
  }

  // --- a row's controls follow its status block ------------------------------------------------------
  function syncRow(row) {
    var grid = row.querySelector(".status dl");
    if (!grid) return;
    var rowBusy = grid.getAttribute("data-busy") === "true";
    var paused = grid.getAttribute("data-paused") === "true";
    var button = row.querySelector(".sync-button");
    if (button) {
      // Disabled with a spinner while queued or syncing: a second press could only say "already queued".
      button.disabled = rowBusy;
      if (rowBusy) button.setAttribute("aria-busy", "true"); else button.removeAttribute("aria-busy");
    }
    var pause = row.querySelector(".pause-button");
    var resume = row.querySelector(".resume-button");
    if (pause) pause.hidden = paused;
    if (resume) resume.hidden = !paused;
    // A message describes the state it was given in ("sync queued."): it goes when that state does.
    var message = row.querySelector(".row-message");
    var state = grid.getAttribute("data-state");
    if (message && message.textContent && message.getAttribute("data-state") !== state) {
      message.textContent = "";
      message.className = "row-message";
    }
  }

  function replaceStatus(id, html) {
    var block = document.getElementById("status-" + id);
    if (block && block.innerHTML !== html) {
      block.innerHTML = html;
      var row = block.closest(".connection");
      syncRow(row);
      refreshRuns(row);
    }
  }

  // A row's state moved (a run started, ended or was cancelled): its run history is out of date
  // too. Fetched again now if it is open, or when it is next opened.
  function refreshRuns(row) {
    var runs = row.querySelector("details[data-runs][data-loaded]");
    if (runs && runs.open) loadRuns(runs);
    else if (runs) runs.removeAttribute("data-loaded");
  }

  // --- "Recent runs": fetched when first opened, so the first screen carries none of it ----------
  // Without JavaScript the disclosure holds a link to the same table as a page of its own.
  function loadRuns(details) {
    var url = details.getAttribute("data-runs-url");
    if (!url) {
      var link = details.querySelector(".runs-link");
      if (!link) return;
      var parsed = new URL(link.href);
      parsed.searchParams.set("partial", "1");
      url = parsed.toString();
      details.setAttribute("data-runs-url", url);
    }
    var body = details.querySelector(".runs-body");
    body.setAttribute("aria-busy", "true");
    fetch(url, { headers: { Accept: "text/html" }, credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        // Signed out: the sign-in page is no table; keep the link, which leads there anyway.
        if (!response.ok || response.redirected) throw new Error("status " + response.status);
        return response.text();
      })
      .then(function (html) {
        body.innerHTML = html;
        details.setAttribute("data-loaded", "true");
      })
      .catch(function () { /* the link stays: it opens the same table as a page */ })
      .then(function () { body.removeAttribute("aria-busy"); });
  }

  // "toggle" does not bubble: listen in the capture phase, for every row, present and future.
  document.addEventListener("toggle", function (event) {
    var details = event.target;
    if (details.matches && details.matches("details[data-runs]") && details.open && !details.hasAttribute("data-loaded")) {
      loadRuns(details);
    }
  }, true);

  // "Scheduled syncs are paused: ..." appears and goes away with the engine's state.
  var banner = document.querySelector("[data-engine-banner]");

  function updateBanner(text) {
    if (!banner) return;
    banner.hidden = !text;
    var body = banner.querySelector(".engine-banner-text");
    if (text && body.textContent !== text) body.textContent = text;
  }

  function updateCounts(counts) {
    Object.keys(counts || {}).forEach(function (key) {
      var el = document.querySelector('[data-count="' + key + '"]');
      if (el && el.textContent !== String(counts[key])) el.textContent = String(counts[key]);
    });
  }

  // --- polling -----------------------------------------------------------------------------------------
  // Every second while a sync is queued or running, every two seconds otherwise, and rarely while
  // the tab is hidden (nobody is looking; catch up as soon as it is shown).
  function delay() {
    if (document.hidden) return 30000;
    return busy ? 1000 : 2000;
  }

  function schedule(ms) {
    if (!statusUrl) return;
    window.clearTimeout(timer);
    timer = window.setTimeout(poll, ms === undefined ? delay() : ms);
  }

  // Responses can arrive out of order (a poll racing a form's answer): only the newest counts.
  var issued = 0;
  var applied = 0;

  function poll() {
    var seq = ++issued;
    var headers = { Accept: "application/json" };
    // Nothing but the clock moved: the server answers 304 with no body.
    if (etag) headers["If-None-Match"] = etag;
    fetch(statusUrl, { headers: headers, credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        var date = response.headers.get("Date");
        if (date) skew = Date.parse(date) + 500 - Date.now();
        if (response.status === 304) return null;
        if (!response.ok) throw new Error("status " + response.status);
        etag = response.headers.get("ETag");
        return response.json();
      })
      .then(function (data) {
        if (!data || seq < applied) return;
        applied = seq;
        Object.keys(data.rows).forEach(function (id) { replaceStatus(id, data.rows[id]); });
        updateBanner(data.banner);
        updateCounts(data.counts);
        busy = data.busy;
      })
      .catch(function () { /* offline or signed out: try again later */ })
      .then(function () { tickTimes(); schedule(); });
  }

  document.addEventListener("visibilitychange", function () {
    schedule(document.hidden ? undefined : 0);
  });

  // --- forms -------------------------------------------------------------------------------------------
  function showMessage(el, text, level, state) {
    if (!el) return;
    el.textContent = text;
    el.className = "row-message message-" + level;
    if (state) el.setAttribute("data-state", state); else el.removeAttribute("data-state");
  }

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.hasAttribute("data-async")) return;
    event.preventDefault();
    var holder = form.closest(".connection") || form.closest(".workspace");
    var message = holder.querySelector(".row-message");
    var buttons = form.querySelectorAll("button");
    buttons.forEach(function (b) { b.disabled = true; });
    // Pause and Resume share Sync Now's form and post to their own URL (formaction).
    var action = event.submitter && event.submitter.hasAttribute("formaction") ? event.submitter.formAction : form.action;
    fetch(action, {
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
        buttons.forEach(function (b) { b.disabled = false; });
        if (form.hasAttribute("data-workspace")) {
          holder.setAttribute("data-stopped", String(data.stopped));
          holder.querySelector(".stop-form").hidden = data.scheduled === 0;
          holder.querySelector(".resume-all-form").hidden = data.stopped === 0;
          showMessage(message, data.message, data.level, null);
          etag = null;
          busy = true;  // many rows changed: look again soon
          return;
        }
        var seq = ++issued;
        applied = seq;
        var block = holder.querySelector(".status");
        block.innerHTML = data.status_html;
        var grid = block.querySelector("dl");
        showMessage(message, data.message, data.level, grid ? grid.getAttribute("data-state") : null);
        // A re-sync was accepted: its progress shows in the status block; fold the form away.
        var disclosure = form.closest("details.resync");
        if (disclosure && data.level === "success") disclosure.open = false;
        syncRow(holder);
        refreshRuns(holder);
        tickTimes();
        busy = busy || data.busy;
      })
      .catch(function (error) {
        buttons.forEach(function (b) { b.disabled = false; });
        showMessage(message, error.message === "session"
          ? "Your session has ended; reload the page to sign in again."
          : "Could not reach AdSync; please try again.", "error", null);
      })
      .then(function () {
        schedule(busy ? 500 : undefined);
      });
  });

  window.setInterval(function () { if (!document.hidden) tickTimes(); }, 1000);
  schedule(zoneChanged ? 0 : undefined);
})();
