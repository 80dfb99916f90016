# nixbuild's demo: the PyTorch-from-source story in under a minute, with no network and no
# nixpkgs. `nixbuild demo` builds `default` (a "source build") with `demo-app-bin` as the
# prebuilt fallback, starting at 8 cores:
#
#   - demo-app compiles with one ~400 MB job per core, under `ulimit -v` of 1.2 GB: above
#     2 cores the allocation really fails (Python's MemoryError), which nixbuild diagnoses as
#     out-of-memory and answers with fewer cores (8 → 4 → 2);
#   - at 2 cores and below it gets further and then fails to link (an ordinary build error,
#     the same every time): one more try at lower parallelism, then the fallback;
#   - demo-app-bin "unpacks a prebuilt binary" and succeeds.
#
# A fresh nonce (./nonce.txt, written by nixbuild) makes every demo really build.
# Builders end on a builtin: Nix 2.8 may report an exec'ed last command as signal 9.
{
  outputs = { self }:
    let
      nonce = builtins.readFile ./nonce.txt;
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: builtins.listToAttrs (map (system: { name = system; value = f system; }) systems);
      step = system: name: deps: script: derivation {
        inherit name system nonce deps;
        builder = "/bin/bash";
        PATH = "/usr/bin:/bin";
        outputs = [ "out" ];
        args = [ "-c" ''
          set -e
          echo "Running phase: unpackPhase"
          echo "Running phase: buildPhase"
          ${script}
          echo "Running phase: installPhase"
          mkdir -p $out
          echo "${name} built with $NIX_BUILD_CORES cores" > $out/${name}.txt
          for d in $deps; do ln -s $d $out/$(basename $d); done
          true
        '' ];
      };
      compileUnits = name: count: ''
        for i in $(seq 1 ${toString count}); do
          echo "  CXX src/${name}/unit$i.o"
          sleep 0.05
        done
      '';
      demo = system:
        let
          libdemo = step system "libdemo-1.0" [ ] (compileUnits "libdemo" 8);
          app = step system "demo-app-1.0" [ libdemo ] ''
            ${compileUnits "demo-app" 6}
            echo "  CXX src/demo-app/kernels.o  ($NIX_BUILD_CORES parallel jobs, ~400 MB each)"
            ulimit -v $((1200 * 1024))
            /usr/bin/python3 -c '
            import os
            jobs = [bytearray(400 << 20) for _ in range(int(os.environ["NIX_BUILD_CORES"]))]
            print(f"  compiled kernels with {len(jobs)} jobs")
            '
            echo "  CXXLD demo-app"
            echo "ld: src/demo-app/cuda.o: undefined reference to cudaGetDeviceCount" >&2
            echo "collect2: error: ld returned 1 exit status" >&2
            exit 1
          '';
          appBin = step system "demo-app-bin-1.0" [ libdemo ] ''
            echo "  unpacking prebuilt demo-app-bin-1.0.whl"
          '';
        in {
          default = app;
          demo-app-bin = appBin;
        };
    in {
      packages = forAll demo;
    };
}
