// The browser client from the Ocha docs (README.md, Quickstart), run by
// Node's WHATWG WebSocket. Only the URL and the exit are added:
//   node ocha_client.js ws://127.0.0.1:PORT N
// closes the socket, and so lets node exit, after N new products.
const [url, expected] = process.argv.slice(2);
let products = 0;

const socket = new WebSocket(url);
socket.onopen = () => console.log("Connected to the WebSocket server");
socket.onmessage = (event) => {
  const data = JSON.parse(event.data);
  if (data.type === "new_product") {
    console.log("New product added:", data.product.name);
    if (++products === Number(expected)) socket.close();
  } else {
    console.log(data.message); // the welcome: "Connecté au WebSocket"
  }
};
socket.onerror = (event) => {
  console.error("WebSocket error:", event.message ?? event.type);
  process.exitCode = 1;
};
socket.onclose = () => console.log("Disconnected");
