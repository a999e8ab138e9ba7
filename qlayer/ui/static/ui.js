// qlayer dashboard: a job page follows its job through server-sent events, and cancels.
// No framework, nothing from a CDN: the server renders every fragment this swaps in.
"use strict";

(function () {
  function csrf() {
    var meta = document.querySelector('meta[name="qlayer-csrf"]');
    return meta ? { header: meta.dataset.header, value: meta.content } : null;
  }

  function setStatus(state) {
    var badge = document.getElementById("live-status");
    if (badge) {
      badge.textContent = state.status;
      badge.className = "status status-" + state.status;
    }
    var button = document.getElementById("cancel");
    if (button && state.final) {
      button.hidden = true;
    }
    document.body.dataset.status = state.status;
  }

  function follow(live) {
    var jobId = live.dataset.job;
    var logs = document.getElementById("logs");
    var logState = document.getElementById("log-state");
    var source = new EventSource("/jobs/" + encodeURIComponent(jobId) + "/stream");
    source.addEventListener("status", function (e) { setStatus(JSON.parse(e.data)); });
    source.addEventListener("gantt", function (e) {
      document.getElementById("gantt").innerHTML = e.data;
    });
    source.addEventListener("summary", function (e) {
      document.getElementById("summary").innerHTML = e.data;
    });
    source.addEventListener("log", function (e) {
      var part = JSON.parse(e.data);
      var follow = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
      if (part.replace !== undefined) {
        logs.textContent = part.replace;
      } else {
        logs.textContent += part.append;
      }
      if (follow) { logs.scrollTop = logs.scrollHeight; }
    });
    source.addEventListener("end", function (e) {
      source.close();
      live.dataset.final = "true";
      if (logState) { logState.textContent = ""; }
      document.body.dataset.ended = JSON.parse(e.data).status;
    });
    source.onerror = function () {
      if (logState && live.dataset.final !== "true") { logState.textContent = "reconnecting…"; }
    };
  }

  function cancelButton(button) {
    button.addEventListener("click", function () {
      var token = csrf();
      var note = document.getElementById("cancel-note");
      if (!window.confirm("Cancel job " + button.dataset.job + " and its children?")) { return; }
      button.disabled = true;
      var headers = {};
      headers[token.header] = token.value;
      fetch("/api/jobs/" + encodeURIComponent(button.dataset.job) + "/cancel", {
        method: "POST",
        headers: headers,
        credentials: "same-origin"
      }).then(function (response) {
        return response.json().then(function (body) { return { ok: response.ok, body: body }; });
      }).then(function (reply) {
        if (!reply.ok) {
          note.textContent = reply.body.error || "cancel failed";
          button.disabled = false;
        } else {
          note.textContent = reply.body.cancelled ? "cancel requested" : "the job had already ended";
        }
      }).catch(function (error) {
        note.textContent = "cancel failed: " + error;
        button.disabled = false;
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var live = document.getElementById("live");
    if (live && live.dataset.final !== "true") { follow(live); }
    var button = document.getElementById("cancel");
    if (button) { cancelButton(button); }
  });
})();
