package templates

import (
	"github.com/dave/jennifer/jen"
)

// worker emits the main package of the worker binary: flag handling, logging, signals
// and the worker loop live in runtime/workermain; main only registers the workflows.
func (g *gen) worker(f *jen.File) {
	f.PackageComment("Command " + g.p.Package + "-worker executes the workflows of package " + g.p.Package +
		"; -h lists its flags.")
	f.ImportName(g.o.PkgPath, g.p.Package)
	f.Func().Id("main").Params().Block(
		jen.Qual("os", "Exit").Call(jen.Qual(workermainPkg, "Main").Call(
			jen.Lit(g.p.Package+"-worker"), jen.Qual("os", "Args").Index(jen.Lit(1), jen.Empty()), jen.Qual(g.o.PkgPath, "Register"))),
	)
}
