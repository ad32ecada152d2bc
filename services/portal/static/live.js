// Live pages: one event stream per page (the API's /v1/events, which for a tenant carries only its
// own events). Any event re-fetches the page's live regions (hx-trigger="vmflow-changed from:body"),
// at most every 300 ms however many events arrive.
(function () {
  if (!document.querySelector("[data-live]")) return;
  let pending = null;
  const refresh = () => {
    pending = null;
    htmx.trigger(document.body, "vmflow-changed");
  };
  const source = new EventSource("/v1/events?named=false");
  source.onopen = () => { document.body.dataset.stream = "open"; };
  source.onerror = () => { document.body.dataset.stream = "reconnecting"; };
  source.onmessage = () => {
    if (pending === null) pending = setTimeout(refresh, 300);
  };
})();
