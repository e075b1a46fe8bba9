/**
 * How snapshot records are encoded at rest, by every backend alike (so a record restores the
 * same whichever stored it). Encoding also proves a record serialisable and keeps callers from
 * sharing mutable objects with a store.
 */
import { Packr } from "msgpackr";

export const recordCodec = new Packr({
  useRecords: false,
  moreTypes: true,
  structuredClone: false,
  // msgpackr would quietly write a function as nothing: state with one cannot be restored
  writeFunction: () => {
    throw new TypeError("a function cannot be stored in a snapshot");
  },
});
