// The VM's serial console in the page: xterm.js over the API's console websocket (the session
// cookie authenticates it; the API checks the page's origin). The guest's bytes arrive as binary
// frames; keystrokes go back as text frames. A live migration ends the session with 4000
// (vm_moved): the console reconnects and finds the VM on its new host.
(function () {
  const button = document.getElementById("console-open");
  if (!button) return;
  const status = document.getElementById("console-status");
  const box = document.getElementById("console");
  const vmId = button.dataset.vm;
  let term = null;
  let socket = null;

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(`${scheme}://${location.host}/v1/vms/${vmId}/console`);
    socket.binaryType = "arraybuffer";
    socket.onopen = () => {
      status.textContent = "Connected. Type into the console; closing the page ends the session.";
      box.dataset.connected = "true";
      term.focus();
    };
    socket.onmessage = (event) => {
      term.write(typeof event.data === "string" ? event.data : new Uint8Array(event.data));
    };
    socket.onclose = (event) => {
      box.dataset.connected = "false";
      if (event.code === 4000) {
        status.textContent = "The VM moved to another host; reconnecting…";
        setTimeout(connect, 500);
        return;
      }
      status.textContent = `Console closed (${event.code}${event.reason ? ": " + event.reason : ""}).`;
      button.disabled = false;
      button.textContent = "Reconnect";
    };
  }

  button.addEventListener("click", () => {
    button.disabled = true;
    if (term === null) {
      term = new Terminal({ convertEol: true, cursorBlink: true, rows: 20, fontSize: 13 });
      const fit = new FitAddon.FitAddon();
      term.loadAddon(fit);
      term.open(box);
      fit.fit();
      term.onData((data) => { if (socket && socket.readyState === WebSocket.OPEN) socket.send(data); });
    }
    status.textContent = "Connecting…";
    connect();
  });
})();
