/** At most `n` holders at a time; the others wait in line (first come, first served). */
export class Limiter {
  #free: number;
  readonly #waiting: Array<() => void> = [];

  constructor(n: number) {
    this.#free = n;
  }

  /** Resolves once a slot is held; call the returned function to give it back (once). */
  async acquire(): Promise<() => void> {
    if (this.#free > 0) this.#free--;
    else await new Promise<void>((resolve) => this.#waiting.push(resolve));
    let held = true;
    return () => {
      if (!held) return;
      held = false;
      const next = this.#waiting.shift();
      // the slot goes straight to the next in line, never back to the pool in between
      if (next !== undefined) next();
      else this.#free++;
    };
  }

  /** Holders waiting for a slot. */
  get waiting(): number {
    return this.#waiting.length;
  }
}
