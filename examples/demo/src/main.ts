/** `npm start`: runs the demo and prints its transcript. A goal may be given as arguments. */
import { runDemo } from "./demo.js";

const goal = process.argv.slice(2).join(" ").trim();

try {
  await runDemo({
    print: (line) => console.log(line),
    timestamps: true,
    ...(goal === "" ? {} : { goal }),
  });
} catch (err) {
  console.error("demo failed:", err);
  process.exitCode = 1;
}
