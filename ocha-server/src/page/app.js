// The live page of ocha-server: lists the products, then keeps the list
// current from the WebSocket events on `/`, and after a lost connection
// resumes from the last event it saw (`/?since=ID`), or loads the list
// again when the server no longer has the events it missed (`resync`).
//
// Product text reaches the page through `textContent` only, never as HTML.
"use strict";

/** The first wait before reconnecting; each failure doubles it. */
const RETRY_FIRST_MS = 500;
/** The longest wait before reconnecting. */
const RETRY_MAX_MS = 5000;
/** The API's largest page. */
const PAGE_SIZE = 100;

const statusLine = document.getElementById("status");
const list = document.getElementById("products");
const count = document.getElementById("count");

/** Products by id, in the API's order (insertion order): `set` keeps a key's place. */
let products = new Map();
/** Whether `products` is the list as of `position`, kept current. */
let listed = false;
/** The id of the last event received: where to resume from; `null` before the first welcome. */
let position = null;
/** The server's position when it welcomed the current connection. */
let welcomedAt = null;
/** Events received while the list loads, applied once it has; `null` when not loading. */
let pending = null;
/** How many loads have started: a load that is not the latest is stale. */
let loads = 0;
/** Failed connections in a row. */
let failures = 0;

function setStatus(state, text) {
  statusLine.dataset.state = state;
  statusLine.textContent = text;
}

function connect() {
  setStatus("connecting", "Connecting…");
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  // Without a position yet, `?since=` (empty) asks for the current one in the welcome.
  const since = encodeURIComponent(position ?? "");
  const current = new WebSocket(`${scheme}//${location.host}/?since=${since}`);
  current.onmessage = (message) => receive(current, JSON.parse(message.data));
  current.onclose = () => reconnect();
}

function reconnect() {
  const delay = Math.min(RETRY_MAX_MS, RETRY_FIRST_MS * 2 ** failures) * (0.5 + Math.random() / 2);
  failures += 1;
  setStatus("offline", `Disconnected, reconnecting in ${Math.ceil(delay / 1000)} s…`);
  setTimeout(connect, delay);
}

function receive(current, message) {
  if (message.type === undefined && typeof message.lastEventId === "string") {
    // The welcome: connected, at the server's current position.
    failures = 0;
    welcomedAt = message.lastEventId;
    position ??= welcomedAt;
    if (listed) {
      setStatus("live", "Live");
    } else {
      load(current);
    }
  } else if (message.type === "resync") {
    // The events since `position` are gone (or were another server's): load
    // the list again. The events that follow come after the welcome's
    // position, which the list includes.
    listed = false;
    position = welcomedAt;
    load(current);
  } else if (message.product !== undefined && typeof message.id === "string") {
    position = message.id;
    if (pending !== null) {
      pending.push(message);
    } else {
      apply(message);
      render();
    }
  }
}

/**
 * Loads every page of the list, then applies the events received meanwhile.
 * Events carry whole documents, so applying one the list already reflects
 * changes nothing in the end.
 */
async function load(current) {
  const generation = ++loads;
  pending = [];
  setStatus("connecting", "Loading products…");
  let loaded;
  let pages;
  try {
    [loaded, pages] = await fetchAll();
  } catch (error) {
    console.error("cannot load the products:", error);
    if (generation === loads) {
      pending = null;
      current.close(); // reconnects, then loads again
    }
    return;
  }
  if (generation !== loads) {
    return; // a resync or a new connection started another load
  }
  const missed = pending;
  // A deletion during a load of several pages may have moved a product
  // from a page not yet read to one already read: read them again.
  if (pages > 1 && missed.some((event) => event.type === "product_deleted")) {
    return load(current);
  }
  pending = null;
  products = loaded;
  missed.forEach(apply);
  listed = true;
  render();
  // If the connection broke meanwhile, the list is still right as of
  // `position`, where the next connection resumes.
  if (current.readyState === WebSocket.OPEN) {
    setStatus("live", "Live");
  }
}

async function fetchAll() {
  const loaded = new Map();
  let page = 1;
  let pages = 1;
  do {
    const response = await fetch(`/api/v1/products?limit=${PAGE_SIZE}&page=${page}`, {
      cache: "no-store",
    });
    if (!response.ok) {
      throw new Error(`GET /api/v1/products answered ${response.status}`);
    }
    const body = await response.json();
    for (const product of body.products) {
      loaded.set(product._id, product);
    }
    pages = body.totalPages;
    page += 1;
  } while (page <= pages);
  return [loaded, pages];
}

function apply(event) {
  if (event.type === "product_deleted") {
    products.delete(event.product._id);
  } else if (event.type === "new_product" || event.type === "product_updated") {
    products.set(event.product._id, event.product);
  }
}

function render() {
  list.replaceChildren(...Array.from(products.values(), item));
  const n = products.size;
  count.textContent = n === 0 ? "No products yet." : `${n} product${n === 1 ? "" : "s"}`;
}

function item(product) {
  const entry = document.createElement("li");
  entry.dataset.id = product._id;
  entry.append(
    text("strong", product.name),
    text("span", [product.category, product.size.join(" / ")].join(" · "), "details"),
  );
  if (!product.isActive) {
    entry.classList.add("inactive");
    entry.append(text("span", "(not on sale)", "details"));
  }
  entry.append(text("span", `CHF ${Number(product.basePriceCHF).toFixed(2)}`, "price"));
  return entry;
}

function text(tag, content, className) {
  const element = document.createElement(tag);
  element.textContent = content;
  if (className !== undefined) {
    element.className = className;
  }
  return element;
}

connect();
