# nixbuild's demo: a small "source build" that needs no network and no nixpkgs.
# Three derivations in a dependency chain, each a /bin/bash builder that prints compiler-style
# lines through the usual phases, so `nixbuild demo` shows a real supervised build.
{
  outputs = { self }:
    let
      # A fresh nonce per `nixbuild demo` (written by nixbuild) so every demo really builds.
      nonce = builtins.readFile ./nonce.txt;
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: builtins.listToAttrs (map (system: { name = system; value = f system; }) systems);
      step = system: name: deps: lines: derivation {
        inherit name system nonce;
        builder = "/bin/bash";
        PATH = "/usr/bin:/bin";
        deps = deps;
        args = [ "-c" ''
          set -e
          for phase in unpackPhase configurePhase buildPhase installPhase; do
            echo "Running phase: $phase"
          done
          echo "building ${name} with $NIX_BUILD_CORES cores"
          for i in $(seq 1 ${toString lines}); do
            echo "  CC  src/${name}/unit$i.o"
            sleep 0.05
          done
          mkdir -p $out
          echo "${name} built with $NIX_BUILD_CORES cores" > $out/${name}.txt
          for d in $deps; do ln -s $d $out/$(basename $d); done
          true  # end on a builtin: Nix 2.8 may report an exec'ed last command as signal 9
        '' ];
      };
      demo = system:
        let
          libdemo = step system "libdemo-1.0" [ ] 10;
          tooldemo = step system "tooldemo-1.0" [ libdemo ] 10;
        in { default = step system "demo-app-1.0" [ libdemo tooldemo ] 15; };
    in {
      packages = forAll demo;
    };
}
