// The estop operator console: the campaign list and the campaign page, drawn from the control
// service's JSON API and refreshed by short polling. Every value from the server is put into the
// page as text (textContent, setAttribute), never as markup, so ids, reasons and names cannot
// inject anything. No library, no external network.
"use strict";

(function () {
  const POLL_MS = 1000;
  const STOP_ALL_PHRASE = "STOP ALL";
  const SVG = "http://www.w3.org/2000/svg";
  const main = document.getElementById("main");

  // -- helpers ---------------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // With ESTOP_HTTP_TOKENS set, the API needs a bearer token: asked for once when it answers 401,
  // kept for this tab only (sessionStorage), sent with every request.
  const TOKEN_KEY = "estop-token";

  async function call(path, init) {
    for (let attempt = 0; ; attempt += 1) {
      const token = sessionStorage.getItem(TOKEN_KEY);
      const headers = { ...init.headers, ...(token ? { Authorization: `Bearer ${token}` } : {}) };
      const response = await fetch(path, { ...init, headers, credentials: "same-origin" });
      if (response.status !== 401 || attempt > 0) return response;
      const entered = window.prompt("Access token for the estop control service");
      if (!entered) return response;
      sessionStorage.setItem(TOKEN_KEY, entered.trim());
    }
  }

  async function getJson(path) {
    const response = await call(path, { headers: { Accept: "application/json" } });
    const body = await response.json().catch(() => ({}));
    return { status: response.status, body };
  }

  async function postJson(path, payload) {
    const response = await call(path, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(payload),
    });
    const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
    return { status: response.status, body };
  }

  // A download goes through call() like every request, so it carries the token when the service
  // needs one (a plain link would not); the browser then saves what came back, under the name
  // the service gave it.
  async function download(path, fallbackName) {
    const response = await call(path, { headers: { Accept: "text/csv" } });
    if (!response.ok) return `HTTP ${response.status}`;
    const disposition = response.headers.get("Content-Disposition") || "";
    const name = (/filename="([^"]+)"/.exec(disposition) || [])[1] || fallbackName;
    const href = URL.createObjectURL(await response.blob());
    const save = el("a", { href, download: name, hidden: "" });
    document.body.append(save);
    save.click();
    save.remove();
    setTimeout(() => URL.revokeObjectURL(href), 60000);
    return null;
  }

  const number = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
  const campaignUrl = (id) => `/console/campaigns/${encodeURIComponent(id)}`;
  const apiUrl = (id, rest) => `/campaigns/${encodeURIComponent(id)}${rest || ""}`;

  function when(ms) {
    if (!ms) return "–";
    return new Date(ms).toISOString().replace("T", " ").replace("Z", " UTC");
  }

  // A stop a guardrail wrote is requested by "guardrail:<rule>": the rule's name, else null.
  const GUARDRAIL = "guardrail:";
  const guardrailRule = (by) => (by && by.startsWith(GUARDRAIL) ? by.slice(GUARDRAIL.length) : null);

  function guardrailBadge(by) {
    const rule = guardrailRule(by);
    return rule === null ? null
      : el("span", { class: "badge guardrail", "data-guardrail": rule, title: `Stopped automatically by the guardrail rule ${rule}` },
        `Guardrail: ${rule}`);
  }

  function badge(state) {
    const name = state || "unknown";
    return el("span", { class: `badge state-${name.toLowerCase()}`, "data-state": name }, name);
  }

  function progressBar(c, label) {
    const planned = c.planned || 0;
    const share = (n) => (planned ? (100 * n) / planned : 0);
    const done = Math.min(100, Math.round(share(c.sent + c.not_sent + (c.failed || 0))));
    return el("div", { class: "bar", role: "progressbar", "aria-label": label, "aria-valuemin": 0,
                       "aria-valuemax": 100, "aria-valuenow": done },
      el("span", { class: "sent", "data-width": share(c.sent) }),
      el("span", { class: "notsent", "data-width": share(c.not_sent) }),
      el("span", { class: "failed", "data-width": share(c.failed || 0) }));
  }

  // Widths through the CSSOM (the style-src policy forbids inline style attributes).
  function sizeBars(root) {
    for (const span of root.querySelectorAll(".bar span")) {
      span.style.width = `${Number(span.getAttribute("data-width"))}%`;
    }
  }

  function dialogFrame(id, title) {
    const heading = el("h2", { id: `${id}-title` }, title);
    const dialog = el("dialog", { id, "aria-labelledby": `${id}-title` }, heading);
    document.body.append(dialog);
    return dialog;
  }

  // -- the campaign list -----------------------------------------------------------------------

  function listPage() {
    let campaigns = [];
    let killSwitch = null; // {ids, failed}: what the kill switch just stopped, what it could not
    const search = el("input", { type: "search", id: "search", placeholder: "campaign id" });
    const stateFilter = el("select", { id: "state-filter" },
      el("option", { value: "" }, "All states"),
      ...["Sending", "Finished", "Stopped"].map((s) => el("option", { value: s }, s)));
    const killButton = el("button", { class: "danger", type: "button" }, "Stop all sending");
    const banner = el("div", { class: "banner", role: "status", id: "list-status" });
    const body = el("tbody");
    const updated = el("p", { class: "muted" });
    main.replaceChildren(
      el("h1", {}, "Campaigns"),
      el("div", { class: "toolbar" },
        el("div", {}, el("label", { for: "search" }, "Search by id"), search),
        el("div", {}, el("label", { for: "state-filter" }, "State"), stateFilter),
        el("div", { class: "spacer" }),
        killButton),
      banner,
      el("section", {},
        el("table", { "aria-label": "Campaigns" },
          el("thead", {}, el("tr", {},
            ["Campaign", "Channels", "State", "Planned", "Sent", "notSent", "Failed", "Pending", "Progress"]
              .map((h, i) => el("th", { class: i < 3 ? "text" : null, scope: "col" }, h)))),
          body),
        updated));

    function render() {
      const text = search.value.trim().toLowerCase();
      const state = stateFilter.value;
      const shown = campaigns.filter((c) => (!state || c.state === state)
        && (!text || c.campaign_id.toLowerCase().includes(text)));
      body.replaceChildren(...shown.map((c) => el("tr", { "data-campaign": c.campaign_id },
        el("td", { class: "text" }, el("a", { href: campaignUrl(c.campaign_id) }, c.campaign_id)),
        el("td", { class: "text" }, c.channels.join(", ")),
        el("td", { class: "text" }, badge(c.state),
          c.stopped ? el("span", { class: "muted" }, c.confirmed ? " confirmed" : " confirming…") : null,
          c.stopped ? guardrailBadge(c.stopped_by) : null),
        el("td", { "data-count": "planned" }, number(c.planned)),
        el("td", { "data-count": "sent" }, number(c.sent)),
        el("td", { "data-count": "not_sent" }, number(c.not_sent)),
        el("td", { "data-count": "failed" }, number(c.failed)),
        el("td", { "data-count": "pending" }, number(c.pending)),
        el("td", {}, progressBar(c, `Progress of ${c.campaign_id}`)))));
      if (!shown.length) {
        body.append(el("tr", {}, el("td", { class: "text muted", colspan: 9 },
          campaigns.length ? "No campaign matches." : "No campaign yet.")));
      }
      sizeBars(body);
      if (killSwitch) {
        const stopped = campaigns.filter((c) => killSwitch.ids.includes(c.campaign_id));
        const confirmed = stopped.filter((c) => c.confirmed).length;
        const failed = killSwitch.failed.map((f) => `${f.campaign_id} (${f.error})`);
        banner.className = `banner ${failed.length ? "warn" : confirmed === killSwitch.ids.length ? "ok" : "info"}`;
        banner.textContent = (killSwitch.ids.length
          ? `Stop all sending: ${killSwitch.ids.length} campaign(s) stopped, confirmed for ${confirmed} of ${killSwitch.ids.length}.`
          : failed.length ? "Stop all sending: nothing was stopped."
            : "Stop all sending: every campaign was stopped already; nothing was written.")
          + (failed.length ? ` Could not stop ${failed.length}: ${failed.join("; ")}.` : "");
      }
    }

    async function refresh() {
      try {
        const reply = await getJson("/campaigns");
        if (reply.status === 200) {
          campaigns = reply.body.campaigns;
          updated.textContent = `Updated ${new Date().toLocaleTimeString()}`;
          render();
        }
      } finally {
        setTimeout(refresh, POLL_MS);
      }
    }

    // The kill switch: a reason, the list of what it will stop, and the phrase typed out.
    const dialog = dialogFrame("stop-all-dialog", "Stop all sending");
    const targets = el("ul", { id: "stop-all-targets" });
    const reason = el("textarea", { id: "stop-all-reason", "aria-required": "true" });
    const phrase = el("input", { type: "text", id: "stop-all-phrase", autocomplete: "off" });
    const error = el("p", { class: "error", role: "alert" });
    const confirm = el("button", { class: "danger", type: "button", disabled: true }, "Stop all campaigns");
    const cancel = el("button", { type: "button" }, "Cancel");
    dialog.append(
      el("p", {}, "This stops every campaign not stopped yet, whatever its state, on every channel. A stop is final."),
      targets,
      el("div", { class: "field" }, el("label", { for: "stop-all-reason" }, "Reason"), reason),
      el("div", { class: "field" },
        el("label", { for: "stop-all-phrase" }, `Type ${STOP_ALL_PHRASE} to confirm`), phrase),
      error,
      el("div", { class: "buttons" }, cancel, confirm));
    phrase.addEventListener("input", () => { confirm.disabled = phrase.value !== STOP_ALL_PHRASE; });
    cancel.addEventListener("click", () => dialog.close());
    killButton.addEventListener("click", () => {
      const ids = campaigns.filter((c) => c.stoppable).map((c) => c.campaign_id);
      targets.replaceChildren(...(ids.length ? ids.map((id) => el("li", {}, id))
        : [el("li", { class: "muted" }, "Every campaign is stopped already.")]));
      reason.value = ""; phrase.value = ""; error.textContent = ""; confirm.disabled = true;
      dialog.showModal();
    });
    confirm.addEventListener("click", async () => {
      confirm.disabled = true;
      error.textContent = "";
      const reply = await postJson("/stop-all", { reason: reason.value, confirm: phrase.value });
      if (reply.status === 200 || reply.status === 202) {
        killSwitch = { ids: reply.body.stopped.map((s) => s.campaign_id), failed: reply.body.not_stopped };
        dialog.close();
        render();
      } else {
        error.textContent = reply.body.error || `HTTP ${reply.status}`;
        confirm.disabled = phrase.value !== STOP_ALL_PHRASE;
      }
    });

    search.addEventListener("input", render);
    stateFilter.addEventListener("change", render);
    refresh();
  }

  // -- one campaign ----------------------------------------------------------------------------

  function campaignPage(campaignId) {
    let detail = null;
    const title = el("h1", {}, el("span", { id: "campaign-id" }, campaignId));
    const actions = el("div", { class: "row", id: "actions" });
    const stopStatus = el("div", { class: "banner", role: "status", id: "stop-status" });
    const canaryStatus = el("div", { class: "banner", role: "status", id: "canary-status" });
    const counts = el("section", { "aria-labelledby": "counts-title" });
    const chart = el("section", { class: "chart", "aria-labelledby": "chart-title" });
    const audit = el("section", { "aria-labelledby": "audit-title", id: "audit" });
    const guardrails = el("section", { "aria-labelledby": "guardrails-title", id: "guardrails" });
    const audience = el("section", { "aria-labelledby": "audience-title" });
    main.replaceChildren(el("p", {}, el("a", { href: "/console" }, "← All campaigns")), title,
      actions, stopStatus, canaryStatus, counts, chart, guardrails, audit, audience);

    const stopButton = el("button", { class: "danger", type: "button" }, "Emergency stop");
    const stopDialog = buildStopDialog();
    stopButton.addEventListener("click", () => stopDialog.open(detail));
    buildAudience();

    function renderHeader() {
      title.replaceChildren(el("span", { id: "campaign-id" }, campaignId), badge(detail.state),
        detail.stop ? guardrailBadge(detail.stop.requested_by) : null);
      actions.replaceChildren(
        el("span", { class: "muted" }, `Channels: ${detail.channels.join(", ") || "–"}`),
        ...(detail.stoppable ? [stopButton] : []));
    }

    function renderStopStatus() {
      const stop = detail.stop;
      if (!stop) { stopStatus.textContent = ""; return; }
      const expected = stop.expected.length;
      const acked = stop.acknowledged.length;
      if (stop.confirmed) {
        stopStatus.className = "banner ok";
        const took = stop.propagation_ms === null ? "" : ` in ${number(stop.propagation_ms)} ms`;
        stopStatus.textContent = expected
          ? `Stop confirmed by ${acked} of ${expected} processes${took}.`
          : "Stop confirmed: no gate or dispatcher is running; every worker that starts reads the stop before its first message.";
      } else if (stop.timed_out) {
        const missing = stop.expected.filter((p) => !stop.acknowledged.includes(p));
        stopStatus.className = "banner warn";
        stopStatus.textContent = `Warning: the stop was not confirmed by every process in time: ${acked} of ${expected} `
          + `acknowledged; still waiting for ${missing.join(", ")}. The stop stays in force.`;
      } else {
        stopStatus.className = "banner info";
        stopStatus.textContent = `Stop being applied: ${acked} of ${expected} processes acknowledged so far…`;
      }
    }

    function renderCounts() {
      const header = ["Channel", "Planned", "Sent", "notSent", "notSent at sending", "notSent at provider",
        "of which cancel unconfirmed", "Failed", "Pending"];
      const row = (name, c, attrs) => el("tr", attrs,
        el("td", {}, name),
        el("td", { "data-count": "planned" }, number(c.planned)),
        el("td", { "data-count": "sent" }, number(c.sent)),
        el("td", { "data-count": "not_sent" }, number(c.not_sent)),
        el("td", { "data-count": "sending" }, number(c.not_sent_by_stage.sending)),
        el("td", { "data-count": "provider" }, number(c.not_sent_by_stage.provider)),
        el("td", { "data-count": "cancel_unconfirmed" }, number(c.cancel_unconfirmed)),
        el("td", { "data-count": "failed" }, number(c.failed)),
        el("td", { "data-count": "pending" }, number(c.pending)));
      const channels = Object.entries(detail.counts);
      const stage = (s) => channels.reduce((n, [, c]) => n + c.not_sent_by_stage[s], 0);
      const total = { planned: detail.planned, sent: detail.sent, not_sent: detail.not_sent,
        cancel_unconfirmed: detail.cancel_unconfirmed, failed: detail.failed, pending: detail.pending,
        not_sent_by_stage: { sending: stage("sending"), provider: stage("provider") } };
      counts.replaceChildren(
        el("h2", { id: "counts-title" }, "Counts per channel and stage"),
        el("table", { "aria-labelledby": "counts-title", id: "counts" },
          el("thead", {}, el("tr", {}, header.map((h) => el("th", { scope: "col" }, h)))),
          el("tbody", {}, channels.map(([name, c]) => row(name, c, { "data-channel": name })),
            row("Total", total, { class: "total", "data-channel": "total" }))),
        el("div", { class: "row" }, progressBar(detail, `Progress of ${campaignId}`),
          el("span", { class: "muted" }, `${number(detail.sent + detail.not_sent + detail.failed)} of ${number(detail.planned)} accounted for`)),
        ...(detail.cancel_unconfirmed ? [el("p", { class: "muted", id: "cancel-unconfirmed" },
          `${number(detail.cancel_unconfirmed)} notSent at the provider: the stop's cancel was requested there `
          + "but not confirmed (the provider took the request without proving the message will not be delivered). "
          + "A delivery receipt that comes later counts the message as sent.")] : []));
      sizeBars(counts);
    }

    function renderAudit() {
      const stop = detail.stop;
      if (!stop) {
        audit.replaceChildren(el("h2", { id: "audit-title" }, "Stop"), el("p", { class: "muted" }, "Not stopped."));
        return;
      }
      const last = detail.stop_to_last_halted_accounted_s;
      const item = (term, value, id) => [el("dt", {}, term), el("dd", { id }, value)];
      audit.replaceChildren(
        el("h2", { id: "audit-title" }, "Stop audit"),
        el("dl", { class: "audit" },
          item("Requested by", stop.requested_by, "audit-by"),
          item("Requested at", when(stop.requested_at), "audit-at"),
          item("Reason", stop.reason, "audit-reason"),
          item("Command id", stop.command_id, "audit-command"),
          item("Channels", stop.channels.join(", "), "audit-channels"),
          item("Confirmed", stop.confirmed ? `${when(stop.confirmed_at)}${stop.propagation_ms === null ? ""
            : ` (${number(stop.propagation_ms)} ms after the request)`}` : "not yet", "audit-confirmed"),
          item("Last halted message accounted", last === null || last === undefined ? "–"
            : `${last.toFixed(1)} s after the stop`, "audit-last-halted"),
          stop.commands.length > 1 ? item("Commands in force",
            stop.commands.map((c) => `${c.command_id} (${c.channels.join(", ")}) by ${c.requested_by}: ${c.reason}`)
              .join("; "), "audit-commands") : null),
        el("table", { "aria-label": "Processes that confirmed the stop" },
          el("thead", {}, el("tr", {}, ["Process", "Roles", "Applied after", "Halted at its provider"]
            .map((h, i) => el("th", { class: i < 2 ? "text" : null, scope: "col" }, h)))),
          el("tbody", {}, stop.acks.length ? stop.acks.map((a) => el("tr", {},
            el("td", { class: "text nowrap" }, a.process_id),
            el("td", { class: "text" }, a.roles.join(", ")),
            el("td", {}, `${number(a.applied_after_ms)} ms`),
            el("td", {}, number(a.halted))))
            : el("tr", {}, el("td", { class: "text muted", colspan: 4 }, "No acknowledgement yet.")))));
    }

    function buildAudience() {
      const exportError = el("span", { class: "error", id: "export-error", role: "status" });
      const link = (status, text) => {
        const href = `${apiUrl(campaignId, "/export.csv")}?status=${status}`;
        const a = el("a", { href, download: "", id: `export-${status}` }, text);
        a.addEventListener("click", async (event) => {
          event.preventDefault();
          const refused = await download(href, `${campaignId}-${status}.csv`);
          exportError.replaceChildren(refused ? `Download refused: ${refused}` : "");
        });
        return a;
      };
      const newId = el("input", { type: "text", id: "relaunch-id", autocomplete: "off" });
      const canaryShare = el("input", { type: "text", id: "relaunch-canary", autocomplete: "off",
        placeholder: "e.g. 2%", size: 8 });
      const button = el("button", { class: "primary", type: "button" }, "Relaunch unsent audience");
      const result = el("p", { id: "relaunch-result", role: "status" });
      // Accepted means checked and started: the relaunch is followed until it is queued or failed.
      button.addEventListener("click", async () => {
        button.disabled = true;
        const reply = await postJson(apiUrl(campaignId, "/relaunch"),
          { as: newId.value, ...(canaryShare.value.trim() ? { canary: canaryShare.value.trim() } : {}) });
        const fail = (text) => {
          button.disabled = false;
          result.className = "error";
          result.replaceChildren(text);
        };
        if (reply.status !== 202) {
          fail(reply.body.error || `HTTP ${reply.status}`);
          return;
        }
        const target = reply.body.campaign_id;
        result.className = "";
        result.replaceChildren(`Queueing ${number(reply.body.recipients)} unsent recipient(s) as ${target}`
          + (reply.body.canary ? ` (canary: ${(reply.body.canary * 100).toLocaleString("en-US")}% first, the rest after the hold or a release)…` : "…"),
          " ", el("a", { href: campaignUrl(target) }, target));
        for (;;) {
          await new Promise((resolve) => setTimeout(resolve, POLL_MS));
          const state = await getJson(reply.body.status_url);
          if (state.status === 200 && state.body.state === "queueing") continue;
          if (state.status !== 200) {
            fail(state.body.error || `HTTP ${state.status}`);
          } else if (state.body.state === "failed") {
            fail(`Relaunch as ${target} failed: ${state.body.error}`);
          } else {
            button.disabled = false;
            result.replaceChildren(`Queued ${number(reply.body.recipients)} unsent recipient(s) as `,
              el("a", { href: campaignUrl(target) }, target), ".");
          }
          return;
        }
      });
      audience.replaceChildren(
        el("h2", { id: "audience-title" }, "Unsent audience"),
        el("p", {}, link("not_sent", "Download notSent recipients (CSV)"), " · ",
          link("sent", "sent (CSV)"), " · ", link("failed", "failed (CSV)"), " ", exportError),
        el("div", { class: "row" },
          el("div", { class: "field" }, el("label", { for: "relaunch-id" }, "New campaign id"), newId),
          el("div", { class: "field" }, el("label", { for: "relaunch-canary" }, "Canary (optional)"), canaryShare),
          button),
        el("p", { class: "muted" }, "Once the error is fixed, queues exactly the notSent recipients as a new campaign."),
        result);
    }

    function renderChart(series) {
      const width = 900, height = 260, left = 64, right = 36, top = 16, bottom = 34;
      const points = series.points;
      const stops = series.stops;
      const heading = el("h2", { id: "chart-title" }, "Sent and notSent over time");
      if (!points.length) {
        chart.replaceChildren(heading, el("p", { class: "muted" }, "No outcome stored yet."));
        return;
      }
      const start = series.start;
      const times = [start, ...points.map((p) => p.at), ...stops.map((s) => s.at)];
      const t0 = Math.min(...times), t1 = Math.max(...times, t0 + 1);
      const peak = Math.max(1, ...points.map((p) => Math.max(p.sent, p.not_sent, p.failed)));
      const x = (t) => left + ((t - t0) / (t1 - t0)) * (width - left - right);
      const y = (n) => top + (1 - n / peak) * (height - top - bottom);
      const plot = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", id: "outcome-chart",
        "aria-label": `Cumulative sent and notSent messages of ${campaignId} over time, stop marked` });
      for (let i = 0; i <= 4; i += 1) {
        const n = Math.round((peak * i) / 4);
        plot.append(svg("line", { class: "grid", x1: left, x2: width - right, y1: y(n), y2: y(n) }),
          svg("text", { class: "label", x: left - 6, y: y(n) + 4, "text-anchor": "end" }, number(n)));
      }
      for (let i = 0; i <= 4; i += 1) {
        const t = t0 + ((t1 - t0) * i) / 4;
        plot.append(svg("text", { class: "label", x: x(t), y: height - 12, "text-anchor": "middle" },
          `+${((t - t0) / 1000).toFixed(t1 - t0 < 10000 ? 2 : 1)} s`));
      }
      plot.append(svg("line", { class: "axis", x1: left, x2: left, y1: top, y2: height - bottom }),
        svg("line", { class: "axis", x1: left, x2: width - right, y1: height - bottom, y2: height - bottom }));
      const line = (key, cls) => svg("polyline", { class: cls, "data-series": key,
        points: [[x(start), y(0)], ...points.map((p) => [x(p.at), y(p[key])])].map((p) => p.join(",")).join(" ") });
      plot.append(line("sent", "line-sent"), line("not_sent", "line-notsent"));
      if (points[points.length - 1].failed) plot.append(line("failed", "line-failed"));
      for (const stop of stops) {
        const rule = guardrailRule(stop.requested_by);
        plot.append(svg("line", { class: rule === null ? "stop-line" : "stop-line automatic", x1: x(stop.at), x2: x(stop.at),
          y1: top, y2: height - bottom, "data-command": stop.command_id, ...(rule === null ? {} : { "data-guardrail": rule }) }),
          // The label sits on the side of the line with room for it.
          svg("text", { class: "stop-label", y: top + 12, ...(x(stop.at) > width * 0.8
            ? { x: x(stop.at) - 5, "text-anchor": "end" } : { x: x(stop.at) + 5 }) },
          rule === null ? "stop" : `automatic stop: ${rule}`));
      }
      const last = points[points.length - 1];
      chart.replaceChildren(heading, plot, el("div", { class: "legend" },
        el("span", {}, el("span", { class: "swatch sent" }), `sent ${number(last.sent)}`),
        el("span", {}, el("span", { class: "swatch notsent" }), `notSent ${number(last.not_sent)}`),
        last.failed ? el("span", {}, el("span", { class: "swatch failed" }), `failed ${number(last.failed)}`) : null,
        stops.length ? el("span", {}, `stop requested at ${when(stops[0].at)}`
          + (guardrailRule(stops[0].requested_by) === null ? "" : ` by the guardrail rule ${guardrailRule(stops[0].requested_by)}`)) : null));
    }

    function buildStopDialog() {
      const dialog = dialogFrame("stop-dialog", "Emergency stop");
      const intro = el("p", {});
      const reason = el("textarea", { id: "stop-reason", "aria-required": "true" });
      const channels = el("fieldset", {}, el("legend", {}, "Channels"));
      const typed = el("input", { type: "text", id: "stop-confirm-id", autocomplete: "off", spellcheck: "false" });
      const error = el("p", { class: "error", role: "alert", id: "stop-error" });
      const confirm = el("button", { class: "danger", type: "button", disabled: true }, "Stop campaign");
      const cancel = el("button", { type: "button" }, "Cancel");
      const impact = el("section", { id: "stop-impact", "aria-labelledby": "stop-impact-title" });
      dialog.append(intro,
        el("div", { class: "field" }, el("label", { for: "stop-reason" }, "Reason"), reason),
        channels, impact,
        el("div", { class: "field" }, el("label", { for: "stop-confirm-id" }, "Type the campaign id to confirm"), typed),
        error, el("div", { class: "buttons" }, cancel, confirm));
      typed.addEventListener("input", () => { confirm.disabled = typed.value !== campaignId; });
      cancel.addEventListener("click", () => dialog.close());
      channels.addEventListener("change", () => showImpact());

      // What the stop would halt now, from GET /campaigns/{id}/stop-preview (nothing written).
      const IMPACT_COLUMNS = [["not_queued", "Not queued yet"], ["before_gate", "Before the gate"],
        ["at_dispatchers", "At the dispatchers"], ["handing_over", "Being handed over"],
        ["at_provider_cancellable", "At the provider, cancellable"],
        ["at_provider_not_cancellable", "At the provider, not cancellable"],
        ["delivered", "Delivered"], ["would_halt", "Would halt"], ["may_still_leak", "May still reach recipients"]];
      let asked = 0;
      async function showImpact() {
        const chosen = [...channels.querySelectorAll("input[type=checkbox]:checked")].map((b) => b.value);
        const title = el("h3", { id: "stop-impact-title" }, "What this stop would halt now");
        if (!chosen.length) { impact.replaceChildren(title); return; }
        const ticket = ++asked;
        impact.replaceChildren(title, el("p", { class: "muted" }, "Reading Kafka…"));
        const reply = await getJson(apiUrl(campaignId, `/stop-preview?channels=${chosen.map(encodeURIComponent).join(",")}`));
        if (ticket !== asked) return;  // the channels changed meanwhile: a newer answer follows
        if (reply.status !== 200) {
          impact.replaceChildren(title, el("p", { class: "error" }, reply.body.error || `HTTP ${reply.status}`));
          return;
        }
        const p = reply.body;
        const row = (name, c, attrs) => el("tr", attrs, el("td", {}, name),
          IMPACT_COLUMNS.map(([key]) => el("td", { "data-count": key }, c.already_stopped ? "–" : number(c[key]))));
        const leaks = p.channels.filter((c) => c.may_still_leak).map((c) =>
          `${c.channel}: up to ${number(c.may_still_leak)} (${c.at_provider_not_cancellable
            ? `${number(c.at_provider_not_cancellable)} its provider holds and cannot cancel` : ""}${
            c.may_still_leak > c.at_provider_not_cancellable
              ? `${c.at_provider_not_cancellable ? "; " : ""}one pacing slice of ${number(c.slice)} per dispatcher being handed over` : ""})`);
        impact.replaceChildren(title,
          el("table", { id: "stop-impact-table", "aria-labelledby": "stop-impact-title" },
            el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Channel"),
              IMPACT_COLUMNS.map(([, h]) => el("th", { scope: "col" }, h)))),
            el("tbody", {}, p.channels.map((c) => row(c.channel, c, { "data-channel": c.channel })),
              row("Total", p.totals, { class: "total", "data-channel": "total" }))),
          el("p", { class: "muted", id: "stop-impact-leak" }, leaks.length
            ? `May still reach recipients after the stop: ${leaks.join("; ")}.`
            : "Nothing handed over after the stop can escape a cancel: every provider here cancels. "
              + "A message a provider is already delivering when the cancel arrives is reported sent."));
      }
      confirm.addEventListener("click", async () => {
        confirm.disabled = true;
        error.textContent = "";
        const boxes = [...channels.querySelectorAll("input[type=checkbox]")];
        const chosen = boxes.filter((b) => b.checked).map((b) => b.value);
        const payload = { reason: reason.value, channels: chosen.length === boxes.length ? [] : chosen };
        if (!chosen.length) {
          error.textContent = "Choose at least one channel.";
          confirm.disabled = false;
          return;
        }
        stopStatus.className = "banner info";
        stopStatus.textContent = "Sending the stop…";
        const reply = await postJson(apiUrl(campaignId, "/stop"), payload);
        if (reply.status === 202) {
          dialog.close();
          stopStatus.textContent = `Stop ${reply.body.command_id} written; being applied…`;
          refresh();
        } else if (reply.status === 200 && reply.body.already_stopped) {
          dialog.close();
          stopStatus.textContent = `Already stopped by command ${reply.body.command_id}; nothing written.`;
        } else {
          stopStatus.textContent = "";
          error.textContent = reply.body.error || `HTTP ${reply.status}`;
          confirm.disabled = typed.value !== campaignId;
        }
      });
      return {
        open(current) {
          intro.replaceChildren("Stops every remaining message of ", el("strong", {}, campaignId),
            " on the channels chosen, in every stage. A stop is final.");
          channels.replaceChildren(el("legend", {}, "Channels"), ...current.channels.map((c) =>
            el("label", {}, el("input", { type: "checkbox", value: c, checked: true, name: "channel" }), ` ${c}`)));
          reason.value = ""; typed.value = ""; error.textContent = ""; confirm.disabled = true;
          dialog.showModal();
          showImpact();
          reason.focus();
        },
      };
    }

    // A canary launch: its first cohort, the hold, and (while it holds) releasing the rest.
    const releaseButton = el("button", { type: "button", id: "canary-release" }, "Release the rest now");
    releaseButton.addEventListener("click", async () => {
      releaseButton.disabled = true;
      const reply = await postJson(apiUrl(campaignId, "/release"), {});
      releaseButton.disabled = false;
      if (reply.status !== 200) canaryStatus.append(" ", el("span", { class: "error" }, reply.body.error || `HTTP ${reply.status}`));
    });
    // Each rule's live value against its threshold, per channel (GET /campaigns/{id}/guardrails).
    const percent = (v) => (v === null || v === undefined ? "–" : `${(v * 100).toFixed(2)}%`);
    async function renderGuardrails() {
      const reply = await getJson(apiUrl(campaignId, "/guardrails"));
      const heading = el("h2", { id: "guardrails-title" }, "Guardrails");
      if (reply.status !== 200) {
        guardrails.replaceChildren(heading, el("p", { class: "muted" }, reply.body.error || `HTTP ${reply.status}`));
        return;
      }
      const g = reply.body;
      const rows = [];
      for (const rule of g.rules) {
        const windows = rule.windows.length ? rule.windows : [null];
        for (const w of windows) {
          const state = !rule.enabled ? "off" : !w ? "no outcome yet" : w.tripped_at ? "tripped"
            : w.sample_reached ? "watching" : `sample ${number(w.sample)} of ${number(rule.min_sample)}`;
          const share = w && rule.threshold ? Math.min(100, (100 * w.value) / rule.threshold) : 0;
          rows.push(el("tr", { "data-rule": rule.name, "data-channel": w ? w.channel : "", class: w && w.tripped_at ? "tripped" : null },
            el("td", { class: "text" }, rule.name),
            el("td", { class: "text" }, rule.metric),
            el("td", { class: "text" }, w ? w.channel : (rule.channels.join(", ") || "all")),
            el("td", { "data-field": "value" }, w ? percent(w.value) : "–"),
            el("td", { "data-field": "threshold" }, percent(rule.threshold)),
            el("td", {}, el("div", { class: "meter", role: "meter", "aria-label": `${rule.name} against its threshold`,
              "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": Math.round(share) },
              el("span", { "data-width": share, class: share >= 100 ? "over" : null }))),
            el("td", { "data-field": "sample" }, w ? `${number(w.hits)} of ${number(w.sample)}` : "–"),
            el("td", { class: "text", "data-field": "state" }, state)));
        }
      }
      const tripped = g.tripped;
      guardrails.replaceChildren(heading,
        tripped ? el("p", { class: "banner warn", id: "guardrail-tripped" },
          `Stopped automatically by the guardrail rule ${tripped.rule} (${tripped.channel}) at ${when(tripped.tripped_at)}: ${tripped.reason}`)
          : null,
        el("table", { id: "guardrail-table", "aria-labelledby": "guardrails-title" },
          el("thead", {}, el("tr", {}, ["Rule", "Metric", "Channel", "Value", "Threshold", "", "Hits of sample", "State"]
            .map((h, i) => el("th", { class: i < 3 || i === 7 ? "text" : null, scope: "col" }, h)))),
          el("tbody", {}, rows)));
      for (const span of guardrails.querySelectorAll(".meter span")) {
        span.style.width = `${Number(span.getAttribute("data-width"))}%`;
      }
    }

    async function renderCanary() {
      const reply = await getJson(apiUrl(campaignId, "/canary"));
      if (reply.status !== 200) { canaryStatus.replaceChildren(); canaryStatus.className = "banner"; return; }
      const c = reply.body;
      const cohort = Object.values(c.cohort).reduce((a, b) => a + b, 0);
      const planned = Object.values(c.planned).reduce((a, b) => a + b, 0);
      const share = `${(c.share * 100).toLocaleString("en-US")}%`;
      canaryStatus.className = "banner info";
      if (c.state === "holding") {
        canaryStatus.replaceChildren(`Canary ${share}: ${number(cohort)} of ${number(planned)} queued; the rest is held `
          + `until ${when(c.hold_until)} unless the campaign is stopped first. `, releaseButton);
      } else if (c.released_by) {
        canaryStatus.replaceChildren(`Canary ${share}: ${number(cohort)} queued first; the rest released `
          + (c.released_by === "hold" ? "when the hold passed." : `by ${c.released_by}.`));
      } else {
        canaryStatus.replaceChildren(`Canary ${share}: stopped during the hold; the other `
          + `${number(planned - cohort)} were never queued (notSent, stage sending).`);
      }
    }

    async function refresh() {
      const reply = await getJson(apiUrl(campaignId));
      if (reply.status === 404 || reply.status === 400) {
        main.replaceChildren(el("h1", {}, "Unknown campaign"),
          el("p", {}, reply.status === 404 ? `No campaign ${campaignId} is known.` : reply.body.error),
          el("p", {}, el("a", { href: "/console" }, "All campaigns")));
        return false;
      }
      if (reply.status !== 200) return true;
      detail = reply.body;
      renderHeader();
      renderStopStatus();
      renderCounts();
      renderAudit();
      await renderCanary();
      await renderGuardrails();
      const series = await getJson(apiUrl(campaignId, "/timeline"));
      if (series.status === 200) renderChart(series.body);
      return true;
    }

    async function poll() {
      let again = true;
      try {
        again = await refresh();
      } finally {
        if (again) setTimeout(poll, POLL_MS);
      }
    }
    poll();
  }

  // -- routing by address ----------------------------------------------------------------------

  const match = window.location.pathname.match(/^\/console\/campaigns\/([^/]+)$/);
  if (match) campaignPage(decodeURIComponent(match[1]));
  else listPage();
})();
