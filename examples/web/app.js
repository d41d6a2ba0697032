// The example page: connects to a broker over WebSocket with the TypeScript client, joins a
// channel, sends to it or to one client, and shows what arrives and what could not be
// delivered. `?broker=ws://HOST:PORT&name=NAME&channel=CHANNEL&connect=1` fills the form (and
// connects) from the address.
import { connect, OutgoingMessage } from "./client/index.js";

const $ = (id) => document.getElementById(id);
let client;
const joined = new Set();

function show(list, text, data) {
  const li = document.createElement("li");
  li.textContent = text;
  for (const [k, v] of Object.entries(data ?? {})) li.dataset[k] = v;
  $(list).append(li);
}

function status(text, kind) {
  $("status").textContent = text;
  $("status").className = kind ?? "";
}

function recipientText(r) {
  return r.type === "Client" ? `client ${r.client}` : r.type === "Channel" ? `channel ${r.channel}` : "everyone";
}

async function read(stream) {
  for await (const msg of stream) {
    const via = msg.channel ? ` in ${msg.channel}` : "";
    show("messages", `${msg.sender}${via}: ${msg.text()}`, { sender: msg.sender, channel: msg.channel ?? "", text: msg.text() });
  }
}

async function watch(events) {
  for await (const e of events) {
    switch (e.type) {
      case "DeliveryFailed":
        show("failures", `${recipientText(e.recipient)}: ${e.reason} (${e.detail})`, { reason: e.reason, id: e.id });
        break;
      case "Accepted":
        show("notices", `accepted ${e.id}`, { accepted: e.id });
        break;
      case "Connected":
        status(`connected as ${e.name}`, "connected");
        break;
      case "Disconnected":
        status(`disconnected: ${e.reason}`, "error");
        break;
      case "Reconnecting":
        status(`reconnecting (attempt ${e.attempt})`, "error");
        break;
      default:
        break;
    }
  }
}

async function onConnect(event) {
  event?.preventDefault();
  $("connect-button").disabled = true;
  try {
    const token = $("token").value.trim();
    client = await connect($("broker").value.trim(), {
      name: $("name").value.trim(),
      ...(token ? { token } : {}),
    });
    status(`connected as ${client.name}`, "connected");
    $("join-button").disabled = false;
    $("send-button").disabled = false;
    watch(client.events());
    const direct = client.directMessages();
    if (direct) read(direct);
    if (new URLSearchParams(location.search).has("channel")) await onJoin();
  } catch (e) {
    status(`cannot connect: ${e.message}`, "error");
    $("connect-button").disabled = false;
  }
}

async function onJoin(event) {
  event?.preventDefault();
  const channel = $("channel").value.trim();
  if (!client || joined.has(channel)) return;
  try {
    const sub = await client.subscribe(channel);
    joined.add(channel);
    show("notices", `joined ${channel}`, { joined: channel });
    read(sub);
  } catch (e) {
    show("failures", `cannot join ${channel}: ${e.message}`, { reason: "refused" });
  }
}

async function onSend(event) {
  event.preventDefault();
  const text = $("text").value;
  const toClient = document.querySelector("input[name=kind]:checked").value === "client";
  const msg = (toClient
    ? OutgoingMessage.toClient($("to").value.trim(), text)
    : OutgoingMessage.toChannel($("channel").value.trim(), text)
  ).persistent($("persistent").checked);
  try {
    const id = await client.send(msg);
    show("notices", `sent ${id}`, { sent: id });
  } catch (e) {
    show("failures", `not sent: ${e.message}`, { reason: "refused" });
  }
}

$("connect").addEventListener("submit", onConnect);
$("join").addEventListener("submit", onJoin);
$("send").addEventListener("submit", onSend);

const params = new URLSearchParams(location.search);
// Never a token: credentials do not belong in an address.
for (const key of ["broker", "name", "channel"]) {
  if (params.has(key)) $(key).value = params.get(key);
}
if (params.has("connect")) onConnect();
