// A ringport worker in Node.js, standard library only: the protocol of docs/workers.md.
// Requests on stdin: RESP arrays [id, user, command, args...]; replies on stdout: [id, reply].
//
//   [[worker]]
//   name = "js"
//   run = ["node", "examples/workers/worker.js"]
//   commands = [{ name = "shout", arity = 2 }, { name = "sum", arity = -1 }]
"use strict";

const handlers = {
  shout: (user, [text]) => ({ simple: text.toString().toUpperCase() + "!" }),
  sum: (user, args) => args.reduce((total, n) => total + Number(n.toString()), 0),
};

function encode(value) {
  if (value instanceof Error) return `-ERR ${value.message.replace(/[\r\n]/g, " ")}\r\n`;
  if (typeof value === "number") return `:${Math.trunc(value)}\r\n`;
  if (value && typeof value.simple === "string") return `+${value.simple.replace(/[\r\n]/g, " ")}\r\n`;
  if (value === null || value === undefined) return "_\r\n";
  const bytes = Buffer.from(value);
  return `$${bytes.length}\r\n${bytes.toString("latin1")}\r\n`;
}

// Parses one [bulk, ...] array from buf at offset; returns [parts, next offset] or null.
function parseRequest(buf, at) {
  const line = (from) => {
    const end = buf.indexOf("\r\n", from);
    return end < 0 ? null : [buf.toString("latin1", from + 1, end), end + 2];
  };
  let head = line(at);
  if (!head) return null;
  let [count, pos] = [Number(head[0]), head[1]];
  const parts = [];
  for (let i = 0; i < count; i++) {
    const size = line(pos);
    if (!size) return null;
    const [len, start] = [Number(size[0]), size[1]];
    if (buf.length < start + len + 2) return null;
    parts.push(buf.subarray(start, start + len));
    pos = start + len + 2;
  }
  return [parts, pos];
}

let pending = Buffer.alloc(0);
process.stdin.on("data", (chunk) => {
  pending = Buffer.concat([pending, chunk]);
  let out = "";
  let at = 0;
  for (let parsed; (parsed = parseRequest(pending, at)); ) {
    const [[id, user, command, ...args], next] = parsed;
    at = next;
    const handler = handlers[command.toString()];
    let value;
    try {
      value = handler ? handler(user.toString(), args) : new Error(`this worker has no command '${command}'`);
    } catch (e) {
      value = e instanceof Error ? e : new Error(String(e));
    }
    out += `*2\r\n:${id.toString()}\r\n` + encode(value);
  }
  pending = pending.subarray(at);
  if (out) process.stdout.write(Buffer.from(out, "latin1"));
});
process.stdin.on("end", () => process.exit(0));
